//! The wire between an agent and the replication server: frames of a 4-byte big-endian
//! length, a kind byte and a body, over TLS. Control messages are JSON; block data is
//! binary (disk, offset, length, codec, payload) so a 4 KiB change costs 4 KiB and a
//! header, not a base64 string.

use std::io;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::ReplicationState;

pub const PROTOCOL_VERSION: u32 = 1;
/// The unit of change detection: the agent hashes and sends 4 KiB blocks.
pub const BLOCK: usize = 4096;
/// The unit of the chunk store for a volume of up to 64 GiB that starts now: what one
/// content address names. A volume keeps the size it started with (each recovery point
/// records it), so a staging folder written with another size reads on. 16 KiB: a random
/// 64 KiB write rewrites about 1.2x its size in the store (2x with 64 KiB chunks), for
/// four times the index entries and map room (measured in BENCHMARKS.md).
pub const CHUNK: usize = 16 * 1024;
/// The chunk size of the points written before sizes were recorded, and the largest
/// chunk the store takes.
pub const LEGACY_CHUNK: usize = 64 * 1024;

/// How many chunks of `chunk` bytes a disk of `size` bytes has.
pub fn chunk_count(size: u64, chunk: usize) -> u64 {
    size.div_ceil(chunk as u64)
}

/// The length of chunk `index` of a disk of `size` bytes (the last one may be short).
pub fn chunk_len(size: u64, chunk: usize, index: u64) -> usize {
    (size - index * chunk as u64).min(chunk as u64) as usize
}
/// The longest run of blocks one data frame carries.
pub const MAX_RUN: usize = 256 * 1024;
/// No frame is longer than a run and its header, so a peer cannot make the other
/// allocate without bound.
pub const MAX_FRAME: usize = MAX_RUN + 1024;

const KIND_CONTROL: u8 = 0;
const KIND_DATA: u8 = 1;
const DATA_HEADER: usize = 2 + 8 + 4 + 1;
/// A data frame's payload up to this long is written with its header in one buffer.
const SMALL_PAYLOAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The device or image path on the source.
    pub name: String,
    pub size: u64,
}

/// Messages that are not block data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The agent's first message.
    Hello {
        version: u32,
        source: String,
        token: String,
        disks: Vec<DiskInfo>,
        /// The last recovery point the server acknowledged to this agent (0: none).
        acked: u64,
        /// A barrier the agent sent whose acknowledgement it did not see.
        pending: Option<u64>,
    },
    /// The server's answer: the recovery point both sides continue from (0: an empty
    /// disk, so everything that is not zero is sent), and the number the agent's next
    /// barrier takes at least: past every point the server holds, which is more than
    /// `base + 1` when the newest could not be read and the session went back to an
    /// older one. A server that does not send it means `base + 1`.
    Welcome {
        base: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    /// Refused: a wrong token, an unknown source, disks that changed size. The agent
    /// stops, since trying again cannot help.
    Refused { reason: String },
    /// Everything sent before this is one crash-consistent state of the disks; it
    /// answers the barrier requests listed (sent before the disks were frozen).
    Barrier {
        seq: u64,
        frozen_at: Timestamp,
        answers: Vec<u64>,
    },
    /// The recovery point is cut and durable.
    BarrierAck { seq: u64 },
    /// The point could not be cut (for example while damaged chunks are being sent
    /// again); the agent cuts another soon.
    BarrierRefused { seq: u64, reason: String },
    /// The agent's view of its replication, sent every second.
    Status(AgentStatus),
    /// What the server asks of the agent.
    Request(Request),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub state: ReplicationState,
    /// Changed bytes the agent found and has not sent yet (during the first pass: the
    /// part of the disks not read yet).
    pub backlog_bytes: u64,
    /// Bytes of the disks read in the first pass (its progress), then their size.
    pub scanned_bytes: u64,
    /// The replication lag: every write older than this many seconds is at the server
    /// (the time since the pass last read the block read longest ago).
    pub lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Send what is still changed and cut a recovery point now (a launch's final sync);
    /// the barrier names the request's id among those it answers.
    Barrier {
        id: u64,
    },
    Pause,
    Resume,
    /// Send this range again whatever the digest says (the server found a chunk of it
    /// damaged in its store).
    Resend {
        disk: u16,
        offset: u64,
        len: u64,
    },
    /// Replication is over (finalize, archive): stop and exit.
    Stop,
}

/// How a data frame's payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Lz4 = 1,
    /// The run is zeros; no payload.
    Zero = 2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub disk: u16,
    pub offset: u64,
    pub len: u32,
    pub codec: Codec,
    pub payload: Vec<u8>,
}

/// Compression that stops trying on data that does not compress (encrypted or already
/// compressed files): after a few runs that shrink by less than 1/8 it sends the next
/// ones as they are, then tries again.
#[derive(Debug, Default)]
pub struct Compressor {
    misses: u32,
    skip: u32,
}

impl Compressor {
    const MISSES: u32 = 4;
    const SKIP: u32 = 64;

    /// The compressed bytes, or `None` when they are not worth it.
    pub fn compress(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let compressed = lz4_flex::block::compress(bytes);
        if compressed.len() + bytes.len() / 8 < bytes.len() {
            self.misses = 0;
            Some(compressed)
        } else {
            self.misses += 1;
            if self.misses >= Self::MISSES {
                self.misses = 0;
                self.skip = Self::SKIP;
            }
            None
        }
    }
}

impl Data {
    /// A run of blocks, compressed when that is worth it, and sent as a marker when zero.
    pub fn encode(disk: u16, offset: u64, bytes: &[u8]) -> Data {
        Data::encode_with(&mut Compressor::default(), disk, offset, bytes)
    }

    /// As [`Data::encode`], with the session's compressor. The run's bytes are copied
    /// only when sent as they are, and not at all when given as a `Vec` (which becomes
    /// the payload).
    pub fn encode_with<B: AsRef<[u8]> + Into<Vec<u8>>>(
        compressor: &mut Compressor,
        disk: u16,
        offset: u64,
        bytes: B,
    ) -> Data {
        let run = bytes.as_ref();
        let len = u32::try_from(run.len()).unwrap_or(u32::MAX);
        let (codec, payload) = if run.iter().all(|&b| b == 0) {
            (Codec::Zero, Vec::new())
        } else if let Some(compressed) = compressor.compress(run) {
            (Codec::Lz4, compressed)
        } else {
            (Codec::Raw, bytes.into())
        };
        Data {
            disk,
            offset,
            len,
            codec,
            payload,
        }
    }

    /// The run's bytes, checked against its stated length (a raw payload is not copied).
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        let len = self.len as usize;
        if len > MAX_RUN {
            return Err(invalid(format!(
                "a data run of {len} bytes is over {MAX_RUN}"
            )));
        }
        let bytes = match self.codec {
            Codec::Zero => vec![0; len],
            Codec::Raw => self.payload,
            Codec::Lz4 => lz4_flex::block::decompress(&self.payload, len)
                .map_err(|err| invalid(format!("a compressed run does not decompress: {err}")))?,
        };
        if bytes.len() != len {
            return Err(invalid(format!(
                "a data run says {len} bytes and holds {}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        4 + 1 + DATA_HEADER + self.payload.len()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(Control),
    Data(Data),
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

pub async fn write_frame<W: AsyncWrite + Unpin>(out: &mut W, frame: &Frame) -> io::Result<usize> {
    match frame {
        Frame::Control(control) => {
            let body = serde_json::to_vec(control).map_err(|err| invalid(err.to_string()))?;
            let mut buf = Vec::with_capacity(5 + body.len());
            buf.extend_from_slice(&(body.len() as u32 + 1).to_be_bytes());
            buf.push(KIND_CONTROL);
            buf.extend_from_slice(&body);
            out.write_all(&buf).await?;
            Ok(buf.len())
        }
        Frame::Data(data) => {
            let mut head = [0u8; 5 + DATA_HEADER];
            head[..4]
                .copy_from_slice(&((1 + DATA_HEADER + data.payload.len()) as u32).to_be_bytes());
            head[4] = KIND_DATA;
            head[5..7].copy_from_slice(&data.disk.to_be_bytes());
            head[7..15].copy_from_slice(&data.offset.to_be_bytes());
            head[15..19].copy_from_slice(&data.len.to_be_bytes());
            head[19] = data.codec as u8;
            if data.payload.len() <= SMALL_PAYLOAD {
                // One write, so one TLS record and segment for a small run.
                let mut buf = Vec::with_capacity(head.len() + data.payload.len());
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data.payload);
                out.write_all(&buf).await?;
            } else {
                // The header, then the payload from where it lies: a large run is not
                // copied into a frame buffer first.
                out.write_all(&head).await?;
                out.write_all(&data.payload).await?;
            }
            Ok(head.len() + data.payload.len())
        }
    }
}

/// The next frame, or `None` at a clean end of the stream; with the bytes it took.
pub async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> io::Result<Option<(Frame, usize)>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(invalid(format!(
            "a frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut kind = [0u8; 1];
    input.read_exact(&mut kind).await?;
    let frame = match kind[0] {
        KIND_CONTROL => {
            let mut body = vec![0u8; len - 1];
            input.read_exact(&mut body).await?;
            serde_json::from_slice(&body)
                .map(Frame::Control)
                .map_err(|err| invalid(format!("a control message that does not read: {err}")))?
        }
        KIND_DATA => {
            if len - 1 < DATA_HEADER {
                return Err(invalid("a data frame shorter than its header".to_owned()));
            }
            let mut head = [0u8; DATA_HEADER];
            input.read_exact(&mut head).await?;
            // The payload is read into a buffer of its own, which the run's bytes become,
            // without zeroing it first (a tenth of the server's reading thread's time).
            let n = len - 1 - DATA_HEADER;
            let mut payload = Vec::with_capacity(n);
            while payload.len() < n {
                let want = (n - payload.len()) as u64;
                if (&mut *input).take(want).read_buf(&mut payload).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Frame::Data(data(&head, payload)?)
        }
        other => return Err(invalid(format!("unknown frame kind {other}"))),
    };
    Ok(Some((frame, len + 4)))
}

fn data(head: &[u8; DATA_HEADER], payload: Vec<u8>) -> io::Result<Data> {
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&head[2..10]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[10..14]);
    let codec = match head[14] {
        0 => Codec::Raw,
        1 => Codec::Lz4,
        2 => Codec::Zero,
        other => return Err(invalid(format!("unknown data codec {other}"))),
    };
    Ok(Data {
        disk: u16::from_be_bytes([head[0], head[1]]),
        offset: u64::from_be_bytes(offset),
        len: u32::from_be_bytes(len),
        codec,
        payload,
    })
}

/// The digest of one block: what the agent compares to find changes.
pub fn block_digest(block: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(block)
}

/// The content address of a chunk.
pub type ChunkHash = [u8; 32];

/// The address that stands for a chunk of zeros, which the store never holds.
pub const ZERO_CHUNK: ChunkHash = [0; 32];

/// How a volume's chunks are addressed. A volume keeps the one its recovery points
/// record (through a full resync too, while it holds any), so a staging folder written
/// with SHA-256 reads on; a volume that starts now uses BLAKE3, which costs the
/// replication server about a third of SHA-256's CPU per byte on this machine (both
/// with the CPU's own instructions; BENCHMARKS.md). Both are cryptographic: a source
/// cannot make a chunk that takes the address of another's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkHasher {
    /// Points written before the hash was recorded.
    #[default]
    Sha256,
    Blake3,
}

impl ChunkHasher {
    /// What a volume that starts now uses.
    pub const NEW: ChunkHasher = ChunkHasher::Blake3;

    /// The address of a chunk: [`ZERO_CHUNK`] for zeros, else its hash.
    pub fn hash(self, bytes: &[u8]) -> ChunkHash {
        if bytes.iter().all(|&b| b == 0) {
            return ZERO_CHUNK;
        }
        match self {
            ChunkHasher::Sha256 => {
                use sha2::Digest;
                sha2::Sha256::digest(bytes).into()
            }
            ChunkHasher::Blake3 => *blake3::hash(bytes).as_bytes(),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..MAX_RUN / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let frames = vec![
            Frame::Control(Control::Welcome {
                base: 7,
                next: Some(9),
            }),
            Frame::Data(Data::encode(1, 8192, &[7u8; 8192])),
            Frame::Data(Data::encode(0, 0, &[0u8; 4096])),
            Frame::Data(Data::encode(
                0,
                4096,
                &(0..4096).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>(),
            )),
            // Incompressible and past SMALL_PAYLOAD: written as header, then payload.
            Frame::Data(Data::encode(0, 65536, &noise)),
        ];
        assert!(matches!(&frames[4], Frame::Data(d) if d.codec == Codec::Raw));
        let mut wire = Vec::new();
        for frame in &frames {
            write_frame(&mut wire, frame).await.expect("write");
        }
        let mut input = &wire[..];
        for frame in &frames {
            let (read, _) = read_frame(&mut input).await.expect("read").expect("frame");
            assert_eq!(&read, frame);
        }
        assert!(read_frame(&mut input).await.expect("end").is_none());
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_allocating() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(u32::MAX).to_be_bytes());
        let err = read_frame(&mut &wire[..]).await.expect_err("refused");
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[tokio::test]
    async fn a_frame_of_an_unknown_kind_or_cut_short_is_refused() {
        let frame = |body: &[u8]| {
            let mut wire = (body.len() as u32).to_be_bytes().to_vec();
            wire.extend_from_slice(body);
            wire
        };
        let short = frame(&[KIND_DATA, 0, 1, 2]);
        let err = read_frame(&mut &short[..]).await.expect_err("refused");
        assert!(err.to_string().contains("shorter than its header"), "{err}");
        let unknown = frame(&[9, 0, 0]);
        let err = read_frame(&mut &unknown[..]).await.expect_err("refused");
        assert!(err.to_string().contains("unknown frame kind 9"), "{err}");
        let mut cut = Vec::new();
        write_frame(&mut cut, &Frame::Data(Data::encode(0, 0, &[5u8; 4096])))
            .await
            .expect("write");
        cut.truncate(cut.len() - 1);
        let err = read_frame(&mut &cut[..]).await.expect_err("cut short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn data_decodes_to_its_bytes_and_checks_its_length() {
        let bytes: Vec<u8> = (0..BLOCK).map(|i| (i % 7) as u8).collect();
        let data = Data::encode(0, 0, &bytes);
        assert_eq!(data.codec, Codec::Lz4);
        assert_eq!(data.clone().into_bytes().expect("decode"), bytes);
        let lying = Data {
            len: 10,
            codec: Codec::Raw,
            ..data
        };
        assert!(lying.into_bytes().is_err());
    }

    #[test]
    fn chunk_addresses_are_the_named_hash_and_zeros_are_the_zero_address() {
        assert_eq!(
            hex(&ChunkHasher::Sha256.hash(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&ChunkHasher::Blake3.hash(b"abc")),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        for hasher in [ChunkHasher::Sha256, ChunkHasher::Blake3] {
            assert_eq!(hasher.hash(&[0u8; CHUNK]), ZERO_CHUNK);
        }
        // Written as a word; absent (points from before it was recorded) is SHA-256.
        assert_eq!(
            serde_json::to_string(&ChunkHasher::Blake3).expect("json"),
            "\"blake3\""
        );
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            hash: ChunkHasher,
        }
        let meta: Meta = serde_json::from_str("{}").expect("json");
        assert_eq!(meta.hash, ChunkHasher::Sha256);
    }
}
