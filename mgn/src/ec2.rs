//! EC2 for the mgn engine: the blueprints' subnets, security groups and instance types
//! are checked before a launch, the source's EC2 launch template gets a new default
//! version when a blueprint asks for something else, and a launched instance is judged
//! by EC2's status checks (system, instance, attached EBS), with the console's last
//! lines when it is impaired.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata as _;
use aws_sdk_ec2::types as ec2;
use replication::{EngineError, EngineResult, ErrorKind, Health, LaunchSettings, TargetState};

/// What EC2 says of an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub state: TargetState,
    pub health: Health,
    pub address: Option<String>,
    pub detail: String,
}

/// The console lines kept in an impaired instance's detail.
const CONSOLE_LINES: usize = 8;

pub struct Ec2 {
    client: Client,
    region: String,
}

fn ec2_error<E, R>(operation: &str, err: &aws_sdk_ec2::error::SdkError<E, R>) -> EngineError
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let code = err.code().unwrap_or_default();
    let kind = match code {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
        "UnauthorizedOperation"
        | "AuthFailure"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "MissingParameter" => ErrorKind::Invalid,
        c if c.ends_with(".NotFound") || c.ends_with(".Malformed") => ErrorKind::NotFound,
        "InvalidInstanceType" => ErrorKind::NotFound,
        _ => ErrorKind::Unavailable,
    };
    let said = err
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| crate::causes(err));
    let code = if code.is_empty() {
        String::new()
    } else {
        format!("{code}: ")
    };
    EngineError::new(kind, format!("EC2 {operation}: {code}{said}"))
}

/// A blueprint's resource EC2 does not have: the launch cannot work until the wave file
/// changes, so it is no error to retry.
fn missing(err: EngineError, what: String) -> EngineError {
    match err.kind {
        ErrorKind::NotFound => {
            EngineError::new(ErrorKind::Invalid, format!("{what} ({})", err.message))
        }
        _ => err,
    }
}

fn summary(status: Option<&ec2::SummaryStatus>) -> &str {
    status.map_or("not reported", ec2::SummaryStatus::as_str)
}

/// The last lines of a console, printable: control characters and terminal escapes
/// (colours, cursor moves) are left out, so the text can go into reports and mail.
pub fn console_tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut clean = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte (0x40..=0x7e), or ESC and one character.
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&n) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\n' || !c.is_control() {
            clean.push(c);
        } else if c == '\t' {
            clean.push(' ');
        }
    }
    let lines: Vec<&str> = clean
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(CONSOLE_LINES)..].join(" | ")
}

/// EC2's three status checks as a health: impaired if one is, ok when the system and
/// instance checks are ok and the attached EBS check is ok or not reported (EC2 reports
/// it for instances on the Nitro system only), initializing otherwise.
pub fn health(
    system: Option<&ec2::SummaryStatus>,
    instance: Option<&ec2::SummaryStatus>,
    ebs: Option<&ec2::SummaryStatus>,
) -> Health {
    use ec2::SummaryStatus as S;
    let all = [system, instance, ebs];
    if all.contains(&Some(&S::Impaired)) {
        return Health::Impaired;
    }
    let ebs_ok = matches!(ebs, None | Some(S::Ok) | Some(S::NotApplicable));
    if system == Some(&S::Ok) && instance == Some(&S::Ok) && ebs_ok {
        Health::Ok
    } else {
        Health::Initializing
    }
}

impl Ec2 {
    pub fn new(client: Client, region: &str) -> Ec2 {
        Ec2 {
            client,
            region: region.to_owned(),
        }
    }

    /// The instance's state, address and status checks.
    pub async fn instance(&self, id: &str) -> EngineResult<Instance> {
        let found = self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|err| ec2_error("DescribeInstances", &err))?;
        let instance = found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id))
            .ok_or_else(|| {
                EngineError::new(
                    ErrorKind::NotFound,
                    format!("EC2 has no instance {id} in {}", self.region),
                )
            })?;
        use ec2::InstanceStateName as N;
        let name = instance.state().and_then(|s| s.name());
        let state = match name {
            Some(N::Running) => TargetState::Running,
            Some(N::Stopping) | Some(N::Stopped) => TargetState::Stopped,
            Some(N::ShuttingDown) | Some(N::Terminated) => TargetState::Terminated,
            _ => TargetState::Pending,
        };
        let address = instance.private_ip_address().map(str::to_owned);
        if state != TargetState::Running {
            let said = name.map_or("unknown", N::as_str);
            return Ok(Instance {
                state,
                health: if state == TargetState::Pending {
                    Health::Initializing
                } else {
                    Health::Impaired
                },
                address,
                detail: format!("instance {said}"),
            });
        }
        let statuses = self
            .client
            .describe_instance_status()
            .instance_ids(id)
            .include_all_instances(true)
            .send()
            .await
            .map_err(|err| ec2_error("DescribeInstanceStatus", &err))?;
        let status = statuses
            .instance_statuses()
            .iter()
            .find(|s| s.instance_id() == Some(id));
        let system = status
            .and_then(|s| s.system_status())
            .and_then(|s| s.status());
        let checks = status
            .and_then(|s| s.instance_status())
            .and_then(|s| s.status());
        let ebs = status
            .and_then(|s| s.attached_ebs_status())
            .and_then(|s| s.status());
        let health = health(system, checks, ebs);
        let mut detail = format!(
            "system status {}, instance status {}, attached EBS status {}",
            summary(system),
            summary(checks),
            summary(ebs)
        );
        if health == Health::Impaired {
            detail.push_str(&self.console(id).await);
        }
        Ok(Instance {
            state,
            health,
            address,
            detail,
        })
    }

    /// The console's last lines, for the detail of an impaired instance.
    async fn console(&self, id: &str) -> String {
        // The newest output is there on Nitro instances only; the others give what the
        // instance wrote last.
        let latest = self
            .client
            .get_console_output()
            .instance_id(id)
            .latest(true)
            .send()
            .await;
        let output = match latest {
            Ok(output) => output,
            Err(_) => match self
                .client
                .get_console_output()
                .instance_id(id)
                .send()
                .await
            {
                Ok(output) => output,
                Err(err) => {
                    return format!(
                        "; console unavailable: {}",
                        ec2_error("GetConsoleOutput", &err).message
                    );
                }
            },
        };
        match output.output().filter(|o| !o.is_empty()) {
            None => "; the console is empty".to_owned(),
            Some(encoded) => match aws_smithy_types::base64::decode(encoded) {
                Ok(bytes) => format!("; console: {}", console_tail(&bytes)),
                Err(_) => "; the console output is not base64".to_owned(),
            },
        }
    }

    /// Checks that the blueprint's instance type, subnet and security groups exist and
    /// that the groups are in the subnet's VPC (and in one VPC).
    pub async fn validate(&self, settings: &LaunchSettings) -> EngineResult<()> {
        if let Some(kind) = &settings.instance_type {
            let found = self
                .client
                .describe_instance_types()
                .instance_types(ec2::InstanceType::from(kind.as_str()))
                .send()
                .await
                .map_err(|err| {
                    missing(
                        ec2_error("DescribeInstanceTypes", &err),
                        format!("instance type {kind} does not exist in {}", self.region),
                    )
                })?;
            if found.instance_types().is_empty() {
                return Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!("instance type {kind} does not exist in {}", self.region),
                ));
            }
        }
        let mut vpc: Option<(String, String)> = None;
        if let Some(subnet) = &settings.subnet {
            let found = self
                .client
                .describe_subnets()
                .subnet_ids(subnet)
                .send()
                .await
                .map_err(|err| {
                    missing(
                        ec2_error("DescribeSubnets", &err),
                        format!("subnet {subnet} does not exist in {}", self.region),
                    )
                })?;
            let Some(found) = found
                .subnets()
                .iter()
                .find(|s| s.subnet_id() == Some(subnet.as_str()))
            else {
                return Err(EngineError::new(
                    ErrorKind::Invalid,
                    format!("subnet {subnet} does not exist in {}", self.region),
                ));
            };
            vpc = found
                .vpc_id()
                .map(|v| (v.to_owned(), format!("subnet {subnet}")));
        }
        if !settings.security_groups.is_empty() {
            let found = self
                .client
                .describe_security_groups()
                .set_group_ids(Some(settings.security_groups.clone()))
                .send()
                .await
                .map_err(|err| {
                    missing(
                        ec2_error("DescribeSecurityGroups", &err),
                        format!(
                            "security group(s) {} do not all exist in {}",
                            settings.security_groups.join(", "),
                            self.region
                        ),
                    )
                })?;
            for group in &settings.security_groups {
                let Some(g) = found
                    .security_groups()
                    .iter()
                    .find(|g| g.group_id() == Some(group.as_str()))
                else {
                    return Err(EngineError::new(
                        ErrorKind::Invalid,
                        format!("security group {group} does not exist in {}", self.region),
                    ));
                };
                let group_vpc = g.vpc_id().unwrap_or_default();
                match &vpc {
                    Some((expected, by)) if expected != group_vpc => {
                        return Err(EngineError::new(
                            ErrorKind::Invalid,
                            format!(
                                "security group {group} is in {group_vpc}, not in {expected} of {by}: a launch needs them in one VPC"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => vpc = Some((group_vpc.to_owned(), format!("security group {group}"))),
                }
            }
        }
        Ok(())
    }

    /// Every version of the launch template (all pages).
    async fn versions(&self, template: &str) -> EngineResult<Vec<ec2::LaunchTemplateVersion>> {
        let mut versions = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..crate::MAX_PAGES {
            let page = self
                .client
                .describe_launch_template_versions()
                .launch_template_id(template)
                .max_results(200)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|err| ec2_error("DescribeLaunchTemplateVersions", &err))?;
            versions.extend(page.launch_template_versions().iter().cloned());
            match page.next_token().filter(|t| !t.is_empty()) {
                Some(next) if Some(next) != token.as_deref() => token = Some(next.to_owned()),
                _ => return Ok(versions),
            }
        }
        Err(EngineError::new(
            ErrorKind::Unavailable,
            format!(
                "EC2 DescribeLaunchTemplateVersions of {template} gave more than {} pages",
                crate::MAX_PAGES
            ),
        ))
    }

    /// Makes the launch template's default version launch as the blueprint says. Every
    /// blueprint is applied to MGN's own version (the newest one Wavelift did not make),
    /// never to the one an earlier blueprint made: a test blueprint's subnet or tags
    /// never reach a cutover, and an empty blueprint makes MGN's version the default
    /// again. A version that already launches as wanted is made the default instead of
    /// a new one (so a retry after a failed ModifyLaunchTemplate creates none). Says
    /// what changed; `None` when the default launches as wanted.
    pub async fn apply(
        &self,
        template: &str,
        settings: &LaunchSettings,
    ) -> EngineResult<Option<String>> {
        let versions = self.versions(template).await?;
        let ours = |v: &ec2::LaunchTemplateVersion| {
            v.version_description().is_some_and(|d| d.starts_with(OURS))
        };
        let Some(base) = versions
            .iter()
            .filter(|v| !ours(v))
            .max_by_key(|v| v.version_number())
        else {
            return Err(EngineError::new(
                ErrorKind::Unavailable,
                format!(
                    "launch template {template} has no version of MGN's own to apply the blueprint to"
                ),
            ));
        };
        let base_number = base.version_number().unwrap_or(1);
        let base_data = base.launch_template_data();
        let want = Launch::of(base_data).with(settings);
        // What will launch is checked, not only what the blueprint says: a subnet of
        // its own with MGN's security groups must still share their VPC.
        let network = settings.subnet.is_some() || !settings.security_groups.is_empty();
        self.validate(&LaunchSettings {
            instance_type: settings.instance_type.clone(),
            subnet: if network { want.subnet.clone() } else { None },
            security_groups: if network {
                want.groups.clone()
            } else {
                Vec::new()
            },
            tags: settings.tags.clone(),
        })
        .await?;
        // MGN's version, or one Wavelift made from it: an older one of Wavelift's was
        // made from an older version of MGN's (another AMI, other disks).
        let current = |v: &ec2::LaunchTemplateVersion| {
            std::ptr::eq(v, base) || (ours(v) && v.version_number() > base.version_number())
        };
        let default = versions.iter().find(|v| v.default_version() == Some(true));
        let have = Launch::of(default.and_then(|v| v.launch_template_data()));
        if default.is_some_and(current) && have == want {
            return Ok(None);
        }
        let changes = have.differences(&want);
        let reuse = versions
            .iter()
            .filter(|v| current(v))
            .filter(|v| Launch::of(v.launch_template_data()) == want)
            .max_by_key(|v| v.version_number())
            .and_then(|v| v.version_number());
        let (number, how) = match reuse {
            Some(n) if n == base_number => (n, format!("MGN's version {n}")),
            Some(n) => (n, format!("version {n}")),
            None => {
                let n = self
                    .create(template, base_number, base_data, &want, settings)
                    .await?;
                (n, format!("version {n} (from MGN's version {base_number})"))
            }
        };
        self.client
            .modify_launch_template()
            .launch_template_id(template)
            .default_version(number.to_string())
            .send()
            .await
            .map_err(|err| ec2_error("ModifyLaunchTemplate", &err))?;
        Ok(Some(format!(
            "launch template {template}: {how} is the default, {}",
            if changes.is_empty() {
                "as it launched before".to_owned()
            } else {
                changes.join(", ")
            }
        )))
    }

    /// A new version from MGN's `base` with what `want` says, written out in full (the
    /// instance type, every network interface, every tag specification), so it launches
    /// as wanted whether or not EC2 copies the rest from the base.
    async fn create(
        &self,
        template: &str,
        base_number: i64,
        base: Option<&ec2::ResponseLaunchTemplateData>,
        want: &Launch,
        settings: &LaunchSettings,
    ) -> EngineResult<i64> {
        let mut data = ec2::RequestLaunchTemplateData::builder();
        if let Some(kind) = &want.instance_type {
            data = data.instance_type(ec2::InstanceType::from(kind.as_str()));
        }
        let subnet_changed = settings.subnet.is_some() && want.subnet != Launch::of(base).subnet;
        for nic in base.map(|b| b.network_interfaces()).unwrap_or_default() {
            let first = nic.device_index().unwrap_or(0) == 0;
            let mut request =
                ec2::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .set_associate_carrier_ip_address(nic.associate_carrier_ip_address())
                    .set_associate_public_ip_address(nic.associate_public_ip_address())
                    .set_delete_on_termination(nic.delete_on_termination())
                    .set_description(nic.description().map(str::to_owned))
                    .set_device_index(nic.device_index())
                    .set_interface_type(nic.interface_type().map(str::to_owned))
                    .set_ipv6_address_count(nic.ipv6_address_count())
                    .set_network_card_index(nic.network_card_index())
                    .set_secondary_private_ip_address_count(
                        nic.secondary_private_ip_address_count(),
                    )
                    .set_subnet_id(nic.subnet_id().map(str::to_owned))
                    .set_groups(Some(nic.groups().to_vec()));
            // A fixed private address belongs to the subnet it was in.
            if !(first && subnet_changed) {
                request =
                    request.set_private_ip_address(nic.private_ip_address().map(str::to_owned));
            }
            if first {
                request = request
                    .set_subnet_id(want.subnet.clone())
                    .set_groups(Some(want.groups.clone()));
            }
            data = data.network_interfaces(request.build());
        }
        if base.is_none_or(|b| b.network_interfaces().is_empty())
            && (want.subnet.is_some() || !want.groups.is_empty())
        {
            data = data.network_interfaces(
                ec2::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .set_subnet_id(want.subnet.clone())
                    .set_groups(Some(want.groups.clone()))
                    .build(),
            );
        }
        let mut specs: Vec<(ec2::ResourceType, Vec<ec2::Tag>)> = base
            .map(|b| {
                b.tag_specifications()
                    .iter()
                    .filter_map(|t| Some((t.resource_type()?.clone(), t.tags().to_vec())))
                    .collect()
            })
            .unwrap_or_default();
        specs.retain(|(r, _)| *r != ec2::ResourceType::Instance);
        if !want.tags.is_empty() {
            specs.push((
                ec2::ResourceType::Instance,
                want.tags
                    .iter()
                    .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                    .collect(),
            ));
        }
        for (resource, tags) in specs {
            data = data.tag_specifications(
                ec2::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(resource)
                    .set_tags(Some(tags))
                    .build(),
            );
        }
        let created = self
            .client
            .create_launch_template_version()
            .launch_template_id(template)
            .source_version(base_number.to_string())
            .version_description(format!("{OURS}a wave's blueprint"))
            .launch_template_data(data.build())
            .send()
            .await
            .map_err(|err| ec2_error("CreateLaunchTemplateVersion", &err))?;
        created
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| {
                EngineError::new(
                    ErrorKind::Unavailable,
                    format!("EC2 CreateLaunchTemplateVersion of {template} returned no version"),
                )
            })
    }
}

/// How the versions Wavelift makes are described; MGN's own versions are the others.
const OURS: &str = "wavelift: ";

/// What a launch template version launches, in the terms of a blueprint: what tells
/// whether a version is the one a blueprint wants.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Launch {
    pub instance_type: Option<String>,
    /// The first network interface's subnet and security groups (sorted).
    pub subnet: Option<String>,
    pub groups: Vec<String>,
    /// The instances' tags.
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Launch {
    pub fn of(data: Option<&ec2::ResponseLaunchTemplateData>) -> Launch {
        let Some(data) = data else {
            return Launch::default();
        };
        let nic = data
            .network_interfaces()
            .iter()
            .find(|n| n.device_index().unwrap_or(0) == 0);
        let mut groups: Vec<String> = nic.map(|n| n.groups().to_vec()).unwrap_or_default();
        groups.sort();
        Launch {
            instance_type: data.instance_type().map(|t| t.as_str().to_owned()),
            subnet: nic.and_then(|n| n.subnet_id()).map(str::to_owned),
            groups,
            tags: data
                .tag_specifications()
                .iter()
                .filter(|t| t.resource_type() == Some(&ec2::ResourceType::Instance))
                .flat_map(|t| t.tags())
                .filter_map(|t| {
                    Some((
                        t.key()?.to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
        }
    }

    /// This launch with what a blueprint sets.
    pub fn with(mut self, settings: &LaunchSettings) -> Launch {
        if let Some(kind) = &settings.instance_type {
            self.instance_type = Some(kind.clone());
        }
        if let Some(subnet) = &settings.subnet {
            self.subnet = Some(subnet.clone());
        }
        if !settings.security_groups.is_empty() {
            self.groups = settings.security_groups.clone();
            self.groups.sort();
        }
        self.tags
            .extend(settings.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// What `want` changes of this launch, for the job log.
    pub fn differences(&self, want: &Launch) -> Vec<String> {
        let mut changes = Vec::new();
        if self.instance_type != want.instance_type {
            changes.push(format!(
                "instance type {}",
                want.instance_type.as_deref().unwrap_or("MGN's")
            ));
        }
        if self.subnet != want.subnet {
            changes.push(format!(
                "subnet {}",
                want.subnet.as_deref().unwrap_or("MGN's")
            ));
        }
        if self.groups != want.groups {
            changes.push(format!("security groups {}", want.groups.join(", ")));
        }
        if self.tags != want.tags {
            changes.push(format!(
                "instance tags {}",
                want.tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2::SummaryStatus as S;

    #[test]
    fn a_console_tail_is_its_last_printable_lines() {
        let console = b"boot\n\x1b[1;31mKernel panic\x1b[0m - not syncing\r\n\n\tVFS: unable to mount root\x07\n";
        assert_eq!(
            console_tail(console),
            "boot | Kernel panic - not syncing | VFS: unable to mount root"
        );
        let long: String = (1..=20).map(|n| format!("line {n}\n")).collect();
        assert_eq!(
            console_tail(long.as_bytes()),
            (13..=20)
                .map(|n| format!("line {n}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }

    #[test]
    fn a_blueprint_is_applied_to_mgns_version_and_compared_as_it_launches() {
        let base = Launch {
            instance_type: Some("t3.small".to_owned()),
            subnet: Some("subnet-mgn".to_owned()),
            groups: vec!["sg-mgn".to_owned()],
            tags: [(
                "AWSApplicationMigrationServiceManaged".to_owned(),
                "mgn.amazonaws.com".to_owned(),
            )]
            .into(),
        };
        let test = LaunchSettings {
            subnet: Some("subnet-test".to_owned()),
            tags: [("env".to_owned(), "test".to_owned())].into(),
            ..LaunchSettings::default()
        };
        let tested = base.clone().with(&test);
        assert_eq!(tested.subnet.as_deref(), Some("subnet-test"));
        assert_eq!(tested.instance_type.as_deref(), Some("t3.small"));
        assert_eq!(tested.tags.len(), 2);
        // The cutover blueprint starts from MGN's version again: nothing of the test's.
        let cutover = base.clone().with(&LaunchSettings {
            instance_type: Some("m5.large".to_owned()),
            ..LaunchSettings::default()
        });
        assert_eq!(cutover.subnet.as_deref(), Some("subnet-mgn"));
        assert!(!cutover.tags.contains_key("env"));
        assert_eq!(
            tested.differences(&cutover),
            [
                "instance type m5.large",
                "subnet subnet-mgn",
                "instance tags AWSApplicationMigrationServiceManaged=mgn.amazonaws.com"
            ]
        );
        assert_eq!(base.clone().with(&LaunchSettings::default()), base);
    }

    #[test]
    fn status_checks_read_as_health() {
        assert_eq!(health(Some(&S::Ok), Some(&S::Ok), None), Health::Ok);
        assert_eq!(health(Some(&S::Ok), Some(&S::Ok), Some(&S::Ok)), Health::Ok);
        assert_eq!(
            health(Some(&S::Ok), Some(&S::Ok), Some(&S::Initializing)),
            Health::Initializing
        );
        assert_eq!(
            health(Some(&S::Ok), Some(&S::Initializing), None),
            Health::Initializing
        );
        assert_eq!(
            health(Some(&S::Ok), Some(&S::Ok), Some(&S::Impaired)),
            Health::Impaired
        );
        assert_eq!(health(Some(&S::Impaired), None, None), Health::Impaired);
        assert_eq!(health(None, None, None), Health::Initializing);
    }
}
