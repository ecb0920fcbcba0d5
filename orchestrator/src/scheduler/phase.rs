//! Where a wave stands in its calendar at a moment: its phase and its next milestone.

use serde::Serialize;

/// A wave's calendar as stored (milliseconds since the epoch, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveCalendar {
    pub name: String,
    /// The engine's name in the definitions (`sim`, `local`, `mgn`).
    pub engine: String,
    pub timezone: String,
    pub build_start: i64,
    pub validate_start: i64,
    pub cutover_start: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub cutover_end: i64,
}

/// The phase at a moment, and what comes next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// `not started`, `build`, `validate`, `cutover week`, `cutover window`, `hypercare`,
    /// `ended`.
    pub phase: &'static str,
    /// The next milestone and when, if any is left.
    pub next: Option<(&'static str, i64)>,
}

impl WaveCalendar {
    /// The phase at `now` (ms): phases run from build to the end of the cutover week,
    /// the window inside the cutover week, hypercare from the window's end.
    pub fn standing(&self, now: i64) -> Standing {
        let milestones: [(&'static str, i64, &'static str); 6] = [
            ("build starts", self.build_start, "not started"),
            ("validate starts", self.validate_start, "build"),
            ("cutover week starts", self.cutover_start, "validate"),
            ("window opens", self.window_start, "cutover week"),
            ("window closes", self.window_end, "cutover window"),
            ("cutover week ends", self.cutover_end, "hypercare"),
        ];
        for (label, at, phase) in milestones {
            if now < at {
                return Standing {
                    phase,
                    next: Some((label, at)),
                };
            }
        }
        Standing {
            phase: "ended",
            next: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calendar() -> WaveCalendar {
        WaveCalendar {
            name: "wave-1".to_owned(),
            engine: "sim".to_owned(),
            timezone: "Europe/Rome".to_owned(),
            build_start: 100,
            validate_start: 200,
            cutover_start: 300,
            window_start: 350,
            window_end: 360,
            cutover_end: 400,
        }
    }

    #[test]
    fn each_moment_has_its_phase_and_the_next_milestone() {
        let c = calendar();
        let at = |now| {
            let s = c.standing(now);
            (s.phase, s.next)
        };
        assert_eq!(at(0), ("not started", Some(("build starts", 100))));
        assert_eq!(at(100), ("build", Some(("validate starts", 200))));
        assert_eq!(at(299), ("validate", Some(("cutover week starts", 300))));
        assert_eq!(at(300), ("cutover week", Some(("window opens", 350))));
        assert_eq!(at(355), ("cutover window", Some(("window closes", 360))));
        assert_eq!(at(360), ("hypercare", Some(("cutover week ends", 400))));
        assert_eq!(at(400), ("ended", None));
    }
}
