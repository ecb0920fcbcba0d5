//! Generated definitions, for property tests and benchmarks: a [`Shape`] says how many
//! waves, applications and servers there are and how they depend on each other, and
//! [`render`] writes it as ordinary wave files, so everything downstream is tested
//! through the real loader.

use std::fmt::Write as _;

use crate::model::TaskKind;

#[derive(Debug, Clone)]
pub struct Shape {
    /// Waves in window order; wave k's window starts `k * cadence_days` after the first.
    pub waves: Vec<WaveShape>,
    pub cadence_days: u32,
}

#[derive(Debug, Clone)]
pub struct WaveShape {
    pub window_hours: u32,
    /// Lengths of build, validate and cutover in days.
    pub phase_days: [u32; 3],
    pub applications: Vec<AppShape>,
}

#[derive(Debug, Clone)]
pub struct AppShape {
    pub servers: Vec<ServerShape>,
    /// (wave, application) of applications it depends on: in an earlier wave, or earlier
    /// in the same wave, so the shape is acyclic and never points to a later wave.
    pub depends_on: Vec<(usize, usize)>,
    pub approval: bool,
}

#[derive(Debug, Clone)]
pub struct ServerShape {
    pub disk_gib: u32,
    pub skip: Vec<TaskKind>,
    /// The replication check's cron schedule, for example `*/30 * * * *`.
    pub verify_schedule: String,
}

fn app_name(wave: usize, app: usize) -> String {
    format!("app-{wave}-{app}")
}

/// A wave per file, named `wave-K.yaml`.
pub fn render(shape: &Shape) -> Vec<(String, String)> {
    let mut server_number: u32 = 0;
    let mut files = Vec::with_capacity(shape.waves.len());
    for (w, wave) in shape.waves.iter().enumerate() {
        let mut text = String::with_capacity(wave.applications.len() * 2048);
        let start_day = 1 + w as u32 * shape.cadence_days;
        let date = civil_date(start_day);
        let _ = write!(
            text,
            "version: 1\nname: wave-{w}\ndescription: generated wave {w}\nengine: sim\nwindow:\n  start: {date} 22:00\n  duration: {}h\n  timezone: Europe/Rome\nphases:\n  build: {}d\n  validate: {}d\n  cutover: {}d\nnotify: [factory@example.com]\nreplication:\n  bandwidth: 1Gbit/s\n  compression: 1.5\ndefaults:\n  os: {{ family: linux, version: Debian 12 }}\n  change_rate: 1%/day\n  access: {{ method: ssh, user: migrate, credential: \"env:SSH_KEY\" }}\n  blueprints:\n    test: {{ instance_type: m5.large, subnet: subnet-test, security_groups: [sg-test] }}\n    cutover: {{ instance_type: m5.large, subnet: subnet-prod, security_groups: [sg-prod] }}\napplications:\n",
            wave.window_hours, wave.phase_days[0], wave.phase_days[1], wave.phase_days[2]
        );
        for (a, app) in wave.applications.iter().enumerate() {
            let _ = writeln!(text, "  - name: {}", app_name(w, a));
            let _ = writeln!(text, "    owner: owner-{w}-{a}@example.com");
            if !app.depends_on.is_empty() {
                let deps: Vec<String> = app
                    .depends_on
                    .iter()
                    .map(|(dw, da)| app_name(*dw, *da))
                    .collect();
                let _ = writeln!(text, "    depends_on: [{}]", deps.join(", "));
            }
            let _ = writeln!(
                text,
                "    defaults:\n      tasks:\n        cutover: {{ approval: {}, expected_duration: 30m }}",
                app.approval
            );
            text.push_str("    servers:\n");
            for server in &app.servers {
                let n = server_number;
                server_number += 1;
                let _ = writeln!(text, "      - name: srv-{n}");
                let _ = writeln!(text, "        fqdn: srv-{n}.dc1.example.com");
                let _ = writeln!(
                    text,
                    "        ip: 127.{}.{}.{}",
                    (n >> 16) & 255,
                    (n >> 8) & 255,
                    n & 255
                );
                let _ = writeln!(text, "        cmdb_id: CI{n:07}");
                let _ = writeln!(
                    text,
                    "        disks:\n          - {{ device: /dev/sda, size: {}GiB, used: {}GiB, boot: true }}",
                    server.disk_gib,
                    server.disk_gib / 2
                );
                let _ = writeln!(
                    text,
                    "        tags: {{ tier: app, environment: production }}"
                );
                if !server.skip.is_empty() {
                    let skips: Vec<&str> = server.skip.iter().map(|k| k.as_str()).collect();
                    let _ = writeln!(text, "        skip: [{}]", skips.join(", "));
                }
                let _ = writeln!(
                    text,
                    "        tasks:\n          replication_verify: {{ schedule: \"{}\" }}",
                    server.verify_schedule
                );
            }
        }
        files.push((format!("wave-{w}.yaml"), text));
    }
    files
}

/// `day` days after 2027-01-01, as a date.
fn civil_date(day: u32) -> String {
    let base = jiff::civil::date(2027, 1, 1);
    base.checked_add(jiff::Span::new().days(i64::from(day)))
        .unwrap_or(base)
        .to_string()
}

/// The benchmark's definition: `waves` waves of `servers_per_wave` servers in
/// applications of ten, each application depending on the previous one and, every
/// tenth wave, on an application of the wave before.
pub fn uniform(waves: usize, servers_per_wave: usize) -> Shape {
    let apps_per_wave = servers_per_wave.div_ceil(10).max(1);
    let waves = (0..waves)
        .map(|w| WaveShape {
            window_hours: 8,
            phase_days: [7, 7, 7],
            applications: (0..apps_per_wave)
                .map(|a| {
                    let mut depends_on = Vec::new();
                    if a > 0 {
                        depends_on.push((w, a - 1));
                    }
                    if w > 0 && w % 10 == 0 && a == 0 {
                        depends_on.push((w - 1, 0));
                    }
                    let servers = (0..10.min(servers_per_wave - a * 10))
                        .map(|s| ServerShape {
                            disk_gib: 40 + (s as u32 * 20),
                            skip: Vec::new(),
                            verify_schedule: "*/30 * * * *".to_owned(),
                        })
                        .collect();
                    AppShape {
                        servers,
                        depends_on,
                        approval: a % 2 == 0,
                    }
                })
                .collect(),
        })
        .collect();
    Shape {
        waves,
        cadence_days: 7,
    }
}

/// Waves that all share one window and have independent applications of ten servers:
/// the most work the executor can be given at once (the executor benchmark).
pub fn parallel(waves: usize, servers_per_wave: usize) -> Shape {
    let mut shape = uniform(waves, servers_per_wave);
    shape.cadence_days = 0;
    for wave in &mut shape.waves {
        for app in &mut wave.applications {
            app.depends_on.clear();
        }
    }
    shape
}
