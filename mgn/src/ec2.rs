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
        let output = match self
            .client
            .get_console_output()
            .instance_id(id)
            .latest(true)
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
        };
        let Some(encoded) = output.output().filter(|o| !o.is_empty()) else {
            return "; the console is empty".to_owned();
        };
        match aws_smithy_types::base64::decode(encoded) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                let tail = &lines[lines.len().saturating_sub(CONSOLE_LINES)..];
                format!("; console: {}", tail.join(" | "))
            }
            Err(_) => "; the console output is not base64".to_owned(),
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

    /// Makes the launch template's default version launch as the blueprint says: a new
    /// version from the current default with the blueprint's instance type, subnet,
    /// security groups and instance tags, unless the default already has them. Says
    /// what changed.
    pub async fn apply(
        &self,
        template: &str,
        settings: &LaunchSettings,
    ) -> EngineResult<Option<String>> {
        let versions = self
            .client
            .describe_launch_template_versions()
            .launch_template_id(template)
            .versions("$Default")
            .send()
            .await
            .map_err(|err| ec2_error("DescribeLaunchTemplateVersions", &err))?;
        let current = versions
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data());
        let nic = current.and_then(|d| d.network_interfaces().first());
        let current_type = current
            .and_then(|d| d.instance_type())
            .map(|t| t.as_str().to_owned());
        let current_subnet = nic.and_then(|n| n.subnet_id()).map(str::to_owned);
        let current_groups: Vec<String> = nic.map(|n| n.groups().to_vec()).unwrap_or_default();
        let current_tags: Vec<(ec2::ResourceType, Vec<ec2::Tag>)> = current
            .map(|d| {
                d.tag_specifications()
                    .iter()
                    .filter_map(|t| Some((t.resource_type()?.clone(), t.tags().to_vec())))
                    .collect()
            })
            .unwrap_or_default();
        let instance_tags: Vec<ec2::Tag> = current_tags
            .iter()
            .find(|(r, _)| *r == ec2::ResourceType::Instance)
            .map(|(_, t)| t.clone())
            .unwrap_or_default();

        let mut changes = Vec::new();
        if let Some(kind) = &settings.instance_type
            && current_type.as_deref() != Some(kind.as_str())
        {
            changes.push(format!("instance type {kind}"));
        }
        if let Some(subnet) = &settings.subnet
            && current_subnet.as_deref() != Some(subnet.as_str())
        {
            changes.push(format!("subnet {subnet}"));
        }
        let mut wanted_groups = settings.security_groups.clone();
        wanted_groups.sort();
        let mut have_groups = current_groups.clone();
        have_groups.sort();
        if !wanted_groups.is_empty() && wanted_groups != have_groups {
            changes.push(format!(
                "security groups {}",
                settings.security_groups.join(", ")
            ));
        }
        let missing_tags: Vec<(&String, &String)> = settings
            .tags
            .iter()
            .filter(|(k, v)| {
                !instance_tags
                    .iter()
                    .any(|t| t.key() == Some(k.as_str()) && t.value() == Some(v.as_str()))
            })
            .collect();
        if !missing_tags.is_empty() {
            changes.push(format!(
                "tags {}",
                missing_tags
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if changes.is_empty() {
            return Ok(None);
        }

        let mut data = ec2::RequestLaunchTemplateData::builder();
        if let Some(kind) = settings
            .instance_type
            .as_deref()
            .or(current_type.as_deref())
        {
            data = data.instance_type(ec2::InstanceType::from(kind));
        }
        if settings.subnet.is_some() || !settings.security_groups.is_empty() || nic.is_some() {
            // The network interface is written whole: what the blueprint leaves out is
            // kept from the current default.
            let mut interface =
                ec2::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .set_subnet_id(settings.subnet.clone().or(current_subnet))
                    .set_groups(Some(if settings.security_groups.is_empty() {
                        current_groups
                    } else {
                        settings.security_groups.clone()
                    }));
            if let Some(nic) = nic {
                interface = interface
                    .set_associate_public_ip_address(nic.associate_public_ip_address())
                    .set_delete_on_termination(nic.delete_on_termination())
                    .set_private_ip_address(nic.private_ip_address().map(str::to_owned));
            }
            data = data.network_interfaces(interface.build());
        }
        let mut specs = current_tags;
        if !settings.tags.is_empty() {
            let mut merged: Vec<ec2::Tag> = instance_tags
                .into_iter()
                .filter(|t| !t.key().is_some_and(|k| settings.tags.contains_key(k)))
                .collect();
            merged.extend(
                settings
                    .tags
                    .iter()
                    .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build()),
            );
            specs.retain(|(r, _)| *r != ec2::ResourceType::Instance);
            specs.push((ec2::ResourceType::Instance, merged));
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
            .source_version("$Default")
            .version_description("wavelift: the wave's blueprint")
            .launch_template_data(data.build())
            .send()
            .await
            .map_err(|err| ec2_error("CreateLaunchTemplateVersion", &err))?;
        let version = created
            .launch_template_version()
            .and_then(|v| v.version_number())
            .ok_or_else(|| {
                EngineError::new(
                    ErrorKind::Unavailable,
                    format!("EC2 CreateLaunchTemplateVersion of {template} returned no version"),
                )
            })?;
        self.client
            .modify_launch_template()
            .launch_template_id(template)
            .default_version(version.to_string())
            .send()
            .await
            .map_err(|err| ec2_error("ModifyLaunchTemplate", &err))?;
        Ok(Some(format!(
            "launch template {template} version {version} is the default: {}",
            changes.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2::SummaryStatus as S;

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
