//! prereq_check: can the server be migrated? Login, sudo, free space on / and /tmp,
//! /tmp executable, a supported OS and architecture, the engine's endpoints reached from
//! the source, and the engine's own needs (MGN's agent builds a kernel module: kernel
//! headers of the running kernel, make, gcc, and dhclient for the launched copy). Each
//! check says what was found, what was expected and what to do.

use std::time::Duration;

use waves::config::Config;
use waves::model::{AccessMethod, EngineKind, OsFamily};
use waves::units::format_bytes;

use crate::context::{Check, Report, TaskContext};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(ctx: &TaskContext<'_>) -> Report {
    let server = ctx.server;
    if ctx.shell.is_rehearsal() {
        let checks = vec![Check::pass(
            "rehearsal",
            format!(
                "rehearsal: {} is not contacted; login, sudo, free space (/ >= {}, /tmp >= {}) and the OS would be checked",
                server.name.value,
                format_bytes(server.tasks.prereq_check.min_free_root as f64),
                format_bytes(server.tasks.prereq_check.min_free_tmp as f64)
            ),
        )];
        return Report::done(checks, "rehearsal", Vec::new());
    }
    let mut checks = Vec::new();
    match ctx
        .shell
        .run(server, "uname -s; uname -m", COMMAND_TIMEOUT)
        .await
    {
        Err(err) => {
            checks.push(Check::fail("login", err.to_string(), err.remedy()));
            return finish(checks);
        }
        Ok(output) if output.status != 0 => {
            checks.push(Check::fail(
                "login",
                format!(
                    "`uname` exited with {}: {}",
                    output.status,
                    crate::agent_push::last_lines(&output.stderr, &output.stdout)
                ),
                "check that the account can log in and run commands",
            ));
            return finish(checks);
        }
        Ok(output) => {
            checks.push(Check::pass(
                "login",
                format!("logged in over {}", server.access.method),
            ));
            if let Some(command) = &server.tasks.prereq_check.prepare {
                let check = prepare(ctx, command).await;
                let failed = !check.passed;
                checks.push(check);
                if failed {
                    return finish(checks);
                }
            }
            let mut lines = output.stdout.lines();
            let system = lines.next().unwrap_or("").trim().to_owned();
            let machine = lines.next().unwrap_or("").trim().to_owned();
            checks.push(os_check(server.os.family, &system));
            if let Some(arch) = &server.os.arch {
                let found = normalize_arch(&machine);
                if found == arch.as_str() {
                    checks.push(
                        Check::pass("architecture", machine.clone())
                            .comparing(found, arch.as_str()),
                    );
                } else {
                    checks.push(
                        Check::fail(
                            "architecture",
                            format!("found {machine}, expected {arch}"),
                            "correct `os.arch` in the wave file, or check the server",
                        )
                        .comparing(machine.clone(), arch.as_str()),
                    );
                }
            }
        }
    }
    if server.access.method == AccessMethod::Local {
        checks.push(Check::pass(
            "sudo",
            "local: commands run as the account that runs Wavelift",
        ));
    } else if server.access.sudo {
        checks.push(sudo_check(ctx).await);
    }
    let settings = &server.tasks.prereq_check;
    checks.push(free_space(ctx, "/", settings.min_free_root, "free space on /").await);
    checks.push(free_space(ctx, "/tmp", settings.min_free_tmp, "free space on /tmp").await);
    checks.push(tmp_exec(ctx).await);
    if ctx.engine_kind == EngineKind::Mgn && server.os.family == OsFamily::Linux {
        checks.extend(mgn_needs(ctx).await);
    }
    if ctx.engine_kind == EngineKind::Local {
        checks.extend(local_needs(ctx).await);
    }
    let endpoints: Vec<&String> = ctx.engine_endpoints.iter().chain(&settings.reach).collect();
    if endpoints.is_empty() {
        checks.push(Check::pass(
            "engine endpoints",
            format!(
                "the {} engine needs no endpoint reachable from the source",
                ctx.engine.name()
            ),
        ));
    }
    for endpoint in endpoints {
        checks.push(reach(ctx, endpoint).await);
    }
    finish(checks)
}

/// sudo without a prompt, or with the password of `access.sudo_credential`.
async fn sudo_check(ctx: &TaskContext<'_>) -> Check {
    let with_password = ctx.server.access.sudo_credential.is_some();
    match ctx
        .shell
        .run_root(ctx.server, "id -u", COMMAND_TIMEOUT)
        .await
    {
        Ok(out) if out.status == 0 && out.stdout.trim() == "0" => Check::pass(
            "sudo",
            if with_password {
                "sudo runs commands as root with the password of access.sudo_credential"
            } else {
                "sudo runs commands as root without a prompt"
            },
        )
        .comparing("root (uid 0)", "root (uid 0)"),
        Ok(out) => {
            let said = out.stderr.trim();
            let remedy = if with_password {
                "check the password access.sudo_credential names, and that the account may use sudo"
            } else {
                "grant the account passwordless sudo (NOPASSWD in sudoers), or set access.sudo_credential"
            };
            Check::fail(
                "sudo",
                format!(
                    "sudo did not run `id -u` as root (exit {}): {}",
                    out.status,
                    if said.is_empty() {
                        out.stdout.trim()
                    } else {
                        said
                    }
                ),
                remedy,
            )
            .comparing(format!("exit {}", out.status), "root (uid 0)")
        }
        Err(err) => Check::fail("sudo", err.to_string(), err.remedy()),
    }
}

/// Whether the source opens a TCP connection to `endpoint` (`host:port`) within 5 s.
async fn reach(ctx: &TaskContext<'_>, endpoint: &str) -> Check {
    let name = format!("reach {endpoint}");
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Check::fail(&name, "not HOST:PORT", "correct tasks.prereq_check.reach");
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // Host and port are checked when the file is read (letters, digits, `.`, `-`, `:`),
    // and quoted again here: each shell level gets its own quoting.
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return Check::fail(&name, "not HOST:PORT", "correct tasks.prereq_check.reach");
    }
    // bash's /dev/tcp where bash is, else nc: one of the two is on every supported OS.
    let script = crate::ssh::quote(&format!("exec 3<>/dev/tcp/{host}/{port}"));
    let probe = format!(
        "if command -v bash >/dev/null 2>&1; then timeout 5 bash -c {script} 2>&1; \
         elif command -v nc >/dev/null 2>&1; then nc -z -w 5 {h} {port} 2>&1; \
         else echo 'neither bash nor nc is installed'; exit 127; fi",
        h = crate::ssh::quote(host),
    );
    match ctx.shell.run(ctx.server, &probe, COMMAND_TIMEOUT).await {
        Ok(out) if out.status == 0 => Check::pass(&name, "the source connects over TCP")
            .comparing("connected", "a TCP connection within 5 s"),
        Ok(out) => {
            let said = out.stdout.trim().lines().last().unwrap_or("").to_owned();
            let found = if out.status == 124 {
                "no answer within 5 s (filtered?)".to_owned()
            } else if said.is_empty() {
                format!("the connection failed (exit {})", out.status)
            } else {
                said
            };
            Check::fail(
                &name,
                format!("the source cannot connect to {endpoint}: {found}"),
                format!(
                    "open TCP {port} from the source to {host} (firewall, security group, route)"
                ),
            )
            .comparing(found, "a TCP connection within 5 s")
        }
        Err(err) => Check::fail(&name, err.to_string(), err.remedy()),
    }
}

/// What a source on this engine must reach over TCP (`host:port`). MGN: its regional
/// endpoint; the replication servers (TCP 1500 in the staging subnet) exist only once
/// replication starts, so agent_push meets them. The rehearsal engine needs nothing;
/// `local` runs on it until the local engine exists.
pub fn engine_endpoints(
    kind: EngineKind,
    config: &Config,
    server: &waves::model::Server,
) -> Vec<String> {
    match (kind, &config.engines.mgn) {
        (EngineKind::Mgn, Some(mgn)) => {
            // The server's own account and Region, when it names one.
            let (endpoint, region) = match server
                .mgn_account
                .as_ref()
                .and_then(|name| mgn.accounts.get(name))
            {
                Some(account) => (account.endpoint.as_deref(), account.region.as_str()),
                None => (mgn.endpoint.as_deref(), mgn.region.as_str()),
            };
            vec![
                endpoint
                    .and_then(authority)
                    .unwrap_or_else(|| format!("mgn.{region}.amazonaws.com:443")),
            ]
        }
        // The replication server the local engine's agent sends to.
        (EngineKind::Local, _) => {
            let local = &config.engines.local;
            vec![local.advertise.clone().unwrap_or_else(|| {
                if local.listen.ip().is_unspecified() {
                    format!("127.0.0.1:{}", local.listen.port())
                } else {
                    local.listen.to_string()
                }
            })]
        }
        _ => Vec::new(),
    }
}

/// `host:port` of an http(s) URL (the scheme's port when it names none).
fn authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?']).next().filter(|h| !h.is_empty())?;
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    if has_port {
        return Some(host.to_owned());
    }
    let port = if scheme == "http" { 80 } else { 443 };
    Some(format!("{host}:{port}"))
}

/// MGN's agent installer builds a kernel module and the launched copy takes its address
/// by DHCP: the headers of the running kernel, make, gcc and dhclient must be there.
async fn mgn_needs(ctx: &TaskContext<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let headers = "k=$(uname -r); if [ -d /lib/modules/$k/build ] || [ -d /usr/src/kernels/$k ]; then echo present $k; else echo missing $k; fi";
    match ctx.shell.run(ctx.server, headers, COMMAND_TIMEOUT).await {
        Ok(out) if out.status == 0 => {
            let mut words = out.stdout.split_whitespace();
            let state = words.next().unwrap_or("");
            let kernel = words.next().unwrap_or("?").to_owned();
            let expected = format!("headers of kernel {kernel}");
            checks.push(if state == "present" {
                Check::pass("kernel headers", format!("installed for the running kernel {kernel}"))
                    .comparing(format!("headers of kernel {kernel}"), expected)
            } else {
                Check::fail(
                    "kernel headers",
                    format!("no headers for the running kernel {kernel}"),
                    format!(
                        "install them (Debian, Ubuntu: apt-get install linux-headers-{kernel}; RHEL family: yum install kernel-devel-{kernel}), or reboot into the kernel whose headers are installed"
                    ),
                )
                .comparing("none", expected)
            });
        }
        Ok(out) => checks.push(Check::fail(
            "kernel headers",
            format!(
                "cannot look (exit {}): {}",
                out.status,
                crate::agent_push::last_lines(&out.stderr, &out.stdout)
            ),
            "check the server",
        )),
        Err(err) => checks.push(Check::fail("kernel headers", err.to_string(), err.remedy())),
    }
    let tools = "for t in make gcc dhclient; do p=$(command -v $t 2>/dev/null || ls /sbin/$t /usr/sbin/$t 2>/dev/null | head -n 1); echo \"$t ${p:-missing}\"; done";
    match ctx.shell.run(ctx.server, tools, COMMAND_TIMEOUT).await {
        Ok(out) if out.status == 0 => {
            for line in out.stdout.lines() {
                let Some((tool, path)) = line.split_once(' ') else {
                    continue;
                };
                let package = match tool {
                    "dhclient" => "isc-dhcp-client (RHEL family: dhcp-client)",
                    other => other,
                };
                checks.push(if path == "missing" {
                    Check::fail(
                        tool,
                        format!("`{tool}` is not installed"),
                        format!("install {package}: MGN's agent needs it"),
                    )
                    .comparing("not installed", "installed")
                } else {
                    Check::pass(tool, format!("installed at {path}")).comparing(path, "installed")
                });
            }
        }
        Ok(out) => checks.push(Check::fail(
            "build tools",
            format!(
                "cannot look (exit {}): {}",
                out.status,
                crate::agent_push::last_lines(&out.stderr, &out.stdout)
            ),
            "check the server",
        )),
        Err(err) => checks.push(Check::fail("build tools", err.to_string(), err.remedy())),
    }
    checks
}

/// Runs the configured prepare command, its facts shell-quoted.
async fn prepare(ctx: &TaskContext<'_>, command: &str) -> Check {
    let server = ctx.server;
    let disks: Vec<String> = server
        .disks
        .iter()
        .map(|d| crate::ssh::quote(&crate::agent_push::device_path(&ctx.reach(), &d.device)))
        .collect();
    let rendered = command
        .replace("{{name}}", &crate::ssh::quote(&server.name.value))
        .replace("{{disks}}", &disks.join(" "))
        .replace(
            "{{config_dir}}",
            &crate::ssh::quote(&ctx.config_dir.display().to_string()),
        );
    let timeout = Duration::from_secs(
        server
            .tasks
            .prereq_check
            .attempts
            .timeout
            .approx_seconds()
            .max(30),
    );
    match ctx.shell.run(server, &rendered, timeout).await {
        Err(err) => Check::fail("prepare", format!("`{command}`: {err}"), err.remedy()),
        Ok(out) if out.status != 0 => Check::fail(
            "prepare",
            format!(
                "`{command}` exited with {}: {}",
                out.status,
                crate::agent_push::last_lines(&out.stderr, &out.stdout)
            ),
            "run the prepare command by hand on the server and fix what it says",
        ),
        Ok(_) => Check::pass("prepare", format!("`{command}` ran")),
    }
}

/// The local engine's agent reads the server's disks: each must be there, readable, and
/// as large as the wave file says (a smaller one is another disk, or an unfinished image).
async fn local_needs(ctx: &TaskContext<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    for disk in &ctx.server.disks {
        let path = crate::agent_push::device_path(&ctx.reach(), &disk.device);
        let quoted = crate::ssh::quote(&path);
        let probe = format!(
            "if [ ! -r {quoted} ]; then echo missing; elif [ -b {quoted} ]; then blockdev --getsize64 {quoted}; else stat -c %s {quoted}; fi"
        );
        let name = format!("disk {}", disk.device);
        let expected = format!("readable, {}", format_bytes(disk.size_bytes as f64));
        let check = match ctx.shell.run_root(ctx.server, &probe, COMMAND_TIMEOUT).await {
            Ok(out) => match out.stdout.trim().parse::<u64>() {
                Ok(size) if size >= disk.size_bytes => Check::pass(
                    name,
                    format!("{path} is readable, {}", format_bytes(size as f64)),
                )
                .comparing(format_bytes(size as f64), expected),
                Ok(size) => Check::fail(
                    name,
                    format!(
                        "{path} is {}, the wave file says {}",
                        format_bytes(size as f64),
                        format_bytes(disk.size_bytes as f64)
                    ),
                    "check that the device is the right one, or correct the disk's size in the wave file",
                )
                .comparing(format_bytes(size as f64), expected),
                Err(_) => Check::fail(
                    name,
                    format!("{path} is not there or not readable"),
                    "correct the disk's device in the wave file, or give the agent's account read access to it",
                ),
            },
            Err(err) => Check::fail(name, err.to_string(), err.remedy()),
        };
        checks.push(check);
    }
    checks
}

fn finish(checks: Vec<Check>) -> Report {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if failed.is_empty() {
        Report::done(checks, "every check passed", Vec::new())
    } else {
        Report {
            progress: crate::context::Progress::Fail {
                reason: format!("prerequisites not met: {}", failed.join("; ")),
                retryable: true,
                checks,
                step: None,
            },
            actions: Vec::new(),
        }
    }
}

fn normalize_arch(machine: &str) -> &str {
    match machine {
        "x86_64" | "amd64" => "x86_64",
        "aarch64" | "arm64" => "arm64",
        other => other,
    }
}

fn os_check(family: OsFamily, system: &str) -> Check {
    let found_family = if system == "Linux" {
        Some(OsFamily::Linux)
    } else {
        None
    };
    let check = if found_family == Some(family) {
        Check::pass("operating system", system.to_owned())
    } else {
        Check::fail(
            "operating system",
            format!("found `{system}`, the wave says {family}"),
            "correct `os.family` in the wave file",
        )
    };
    check.comparing(system, family.as_str())
}

async fn free_space(ctx: &TaskContext<'_>, path: &str, minimum: u64, name: &str) -> Check {
    let command = format!("df -Pk {path} | tail -n 1");
    match ctx.shell.run(ctx.server, &command, COMMAND_TIMEOUT).await {
        Ok(out) if out.status == 0 => {
            let available = out
                .stdout
                .split_whitespace()
                .nth(3)
                .and_then(|kib| kib.parse::<u64>().ok())
                .map(|kib| kib * 1024);
            let at_least = format!("at least {}", format_bytes(minimum as f64));
            match available {
                Some(bytes) if bytes >= minimum => Check::pass(
                    name,
                    format!(
                        "{} free (at least {} needed)",
                        format_bytes(bytes as f64),
                        format_bytes(minimum as f64)
                    ),
                )
                .comparing(format!("{} free", format_bytes(bytes as f64)), at_least),
                Some(bytes) => Check::fail(
                    name,
                    format!(
                        "{} free, {} needed",
                        format_bytes(bytes as f64),
                        format_bytes(minimum as f64)
                    ),
                    format!("free space on {path}, or lower tasks.prereq_check.min_free_space"),
                )
                .comparing(format!("{} free", format_bytes(bytes as f64)), at_least),
                None => Check::fail(
                    name,
                    format!("cannot read `df` output: {}", out.stdout.trim()),
                    "check that df is installed",
                ),
            }
        }
        Ok(out) => Check::fail(
            name,
            format!("`df` exited with {}", out.status),
            "check that df is installed",
        ),
        Err(err) => Check::fail(name, err.to_string(), err.remedy()),
    }
}

async fn tmp_exec(ctx: &TaskContext<'_>) -> Check {
    let command = "awk '$2 == \"/tmp\" {print $4}' /proc/mounts";
    match ctx.shell.run(ctx.server, command, COMMAND_TIMEOUT).await {
        Ok(out) if out.status == 0 => {
            let options = out.stdout.trim();
            if options.split(',').any(|o| o == "noexec") {
                Check::fail(
                    "/tmp executable",
                    format!("/tmp is mounted noexec ({options})"),
                    "remount /tmp without noexec for the agent's installation",
                )
                .comparing(options, "no noexec")
            } else if options.is_empty() {
                Check::pass(
                    "/tmp executable",
                    "/tmp is part of / (no mount options of its own)",
                )
                .comparing("part of /", "no noexec")
            } else {
                Check::pass("/tmp executable", format!("mount options {options}"))
                    .comparing(options, "no noexec")
            }
        }
        Ok(out) => Check::fail(
            "/tmp executable",
            format!("cannot read /proc/mounts (exit {})", out.status),
            "check the server",
        ),
        Err(err) => Check::fail("/tmp executable", err.to_string(), err.remedy()),
    }
}

#[cfg(test)]
mod tests {
    use super::authority;

    /// A failed command's complaint is found where it wrote it: a script that echoes
    /// its reason to stdout left every report saying "exited with 1: ".
    #[test]
    fn a_failure_says_what_the_command_printed_wherever_it_printed_it() {
        use crate::agent_push::last_lines;
        assert_eq!(
            last_lines("", "checking\nno disk space\n"),
            "checking / no disk space"
        );
        assert_eq!(
            last_lines("permission denied\n", "checking\n"),
            "permission denied"
        );
        assert_eq!(last_lines("  \n", ""), "(it printed nothing)");
    }

    #[test]
    fn an_endpoint_url_gives_the_address_a_source_must_reach() {
        assert_eq!(
            authority("http://127.0.0.1:8443").as_deref(),
            Some("127.0.0.1:8443")
        );
        assert_eq!(
            authority("https://vpce-1.mgn.eu-west-1.vpce.amazonaws.com/").as_deref(),
            Some("vpce-1.mgn.eu-west-1.vpce.amazonaws.com:443")
        );
        assert_eq!(authority("http://[::1]/x").as_deref(), Some("[::1]:80"));
        assert_eq!(authority("no-scheme"), None);
    }
}
