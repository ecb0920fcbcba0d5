//! Where `wavelift sim serve-mgn --ec2-endpoint URL` launches: an EC2 emulator (moto's
//! server) reached over EC2's Query protocol (a form-encoded POST, an XML answer) for the
//! few calls MGN itself makes in an account: a launch template per source server, an
//! instance per launched target (from the template's default version, which the client
//! under test sets from its blueprints), and its termination. The emulator takes any
//! signature, so the calls are not signed: their Authorization header only names the
//! service and Region (the emulator routes by them); this talks to a test's emulator
//! only.

use anyhow::{Context as _, bail};

pub struct Ec2Bridge {
    endpoint: String,
    region: String,
    http: reqwest::Client,
    /// The image every instance boots (MGN's would be the converted disks').
    image: String,
}

/// The text of the first `<name>` element of an EC2 answer. The answers read here are
/// EC2's flat, known shapes, so a full XML parser would add nothing.
pub fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(unescape(&xml[start..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// How long one call may take: the emulator is on loopback.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Ec2Bridge {
    /// Connects to the emulator and picks the image instances boot.
    pub async fn connect(endpoint: &str, region: &str) -> anyhow::Result<Ec2Bridge> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("an HTTP client")?;
        let mut bridge = Ec2Bridge {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            region: region.to_owned(),
            http,
            image: String::new(),
        };
        let images = bridge
            .call("DescribeImages", &[("Owner.1", "amazon".to_owned())])
            .await?;
        bridge.image = element(&images, "imageId")
            .with_context(|| format!("the EC2 endpoint {endpoint} lists no image to launch"))?;
        Ok(bridge)
    }

    async fn call(&self, action: &str, params: &[(&str, String)]) -> anyhow::Result<String> {
        let mut form: Vec<(&str, String)> = vec![
            ("Action", action.to_owned()),
            ("Version", "2016-11-15".to_owned()),
        ];
        form.extend(params.iter().cloned());
        let response = self
            .http
            .post(format!("{}/", self.endpoint))
            .header(
                "Authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDWAVELIFTSIM/20260101/{}/ec2/aws4_request, SignedHeaders=host, Signature=0",
                    self.region
                ),
            )
            .form(&form)
            .send()
            .await
            .with_context(|| format!("EC2 {action} at {}", self.endpoint))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("EC2 {action}: reading the answer"))?;
        if !status.is_success() {
            bail!(
                "EC2 {action}: {} {}",
                element(&body, "Code").unwrap_or_else(|| status.to_string()),
                element(&body, "Message").unwrap_or_default()
            );
        }
        Ok(body)
    }

    /// A launch template for a source server, as MGN makes one when the agent installs;
    /// the one an earlier serve-mgn made against the same emulator is taken again.
    pub async fn create_template(&self, source: &str) -> anyhow::Result<String> {
        let name = format!("wavelift-{source}");
        let existing = self
            .call(
                "DescribeLaunchTemplates",
                &[
                    ("Filter.1.Name", "launch-template-name".to_owned()),
                    ("Filter.1.Value.1", name.clone()),
                ],
            )
            .await?;
        if let Some(id) = element(&existing, "launchTemplateId") {
            return Ok(id);
        }
        let answer = self
            .call(
                "CreateLaunchTemplate",
                &[
                    ("LaunchTemplateName", name),
                    ("LaunchTemplateData.ImageId", self.image.clone()),
                    ("LaunchTemplateData.InstanceType", "t3.small".to_owned()),
                ],
            )
            .await?;
        element(&answer, "launchTemplateId")
            .context("EC2 CreateLaunchTemplate returned no launchTemplateId")
    }

    /// An instance from the template's default version, tagged with its source.
    pub async fn run_instance(&self, template: &str, source: &str) -> anyhow::Result<String> {
        let answer = self
            .call(
                "RunInstances",
                &[
                    ("MinCount", "1".to_owned()),
                    ("MaxCount", "1".to_owned()),
                    ("ImageId", self.image.clone()),
                    ("LaunchTemplate.LaunchTemplateId", template.to_owned()),
                    ("LaunchTemplate.Version", "$Default".to_owned()),
                    ("TagSpecification.1.ResourceType", "instance".to_owned()),
                    (
                        "TagSpecification.1.Tag.1.Key",
                        "AWSApplicationMigrationServiceSourceServerID".to_owned(),
                    ),
                    ("TagSpecification.1.Tag.1.Value", source.to_owned()),
                ],
            )
            .await?;
        element(&answer, "instanceId").context("EC2 RunInstances returned no instanceId")
    }

    pub async fn terminate(&self, instances: &[String]) -> anyhow::Result<()> {
        if instances.is_empty() {
            return Ok(());
        }
        let params: Vec<(String, String)> = instances
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("InstanceId.{}", i + 1), id.clone()))
            .collect();
        let params: Vec<(&str, String)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        self.call("TerminateInstances", &params).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_read_from_ec2_answers() {
        let xml = "<RunInstancesResponse><instancesSet><item><instanceId>i-0abc</instanceId>\
                   <tagSet><item><key>a&amp;b</key></item></tagSet></item></instancesSet></RunInstancesResponse>";
        assert_eq!(element(xml, "instanceId").as_deref(), Some("i-0abc"));
        assert_eq!(element(xml, "key").as_deref(), Some("a&b"));
        assert_eq!(element(xml, "imageId"), None);
        assert_eq!(element("<a>unclosed", "a"), None);
    }
}
