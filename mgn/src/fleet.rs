//! Several AWS accounts or Regions as one `mgn` engine: each wave server migrates to the
//! account its `mgn_account` names (the default one otherwise), and every call goes to
//! the account of the source, job or instance it is about. A launch of servers of
//! several accounts starts one job in each; the job the tasks follow is then the
//! accounts' jobs together, its id theirs joined by `+` (MGN's ids never hold one).
//! MGN's quotas hold per account and Region; the executor keeps within one set of them
//! for all accounts together, which never exceeds any.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use replication::{
    AgentInstall, EngineError, EngineResult, ErrorKind, Job, JobId, JobServer, JobStatus,
    LaunchKind, LaunchSettings, LaunchStatus, LifeCycle, PointInTime, Quotas, RecoveryPoint,
    ReplicationAction, ReplicationEngine, SourceId, SourceServer, SourceSpec, Target, TargetId,
};

use crate::{MatchReport, MgnEngine, Wanted, lock};

/// The separator of a job made of several accounts' jobs.
const JOINED: char = '+';

pub struct MgnFleet {
    /// The default account (index 0).
    default: MgnEngine,
    /// The named ones (indexes 1...): (name, engine).
    others: Vec<(String, MgnEngine)>,
    /// The account of each wave server, by name; the default (0) when absent.
    account_of: HashMap<String, usize>,
    /// The account of each id seen: sources, jobs, instances.
    seen: Mutex<HashMap<String, usize>>,
    /// The servers whose account refused their part of a launch: (job, source) and why.
    failed: Mutex<HashMap<(String, String), String>>,
}

impl MgnFleet {
    /// `account_of` maps server names to accounts: 0 the default, `n` the n-th of
    /// `others`.
    pub fn new(
        default: MgnEngine,
        others: Vec<(String, MgnEngine)>,
        account_of: HashMap<String, usize>,
    ) -> MgnFleet {
        MgnFleet {
            default,
            others,
            account_of,
            seen: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self) -> usize {
        1 + self.others.len()
    }

    fn engine(&self, index: usize) -> &MgnEngine {
        match index.checked_sub(1).and_then(|i| self.others.get(i)) {
            Some((_, engine)) => engine,
            None => &self.default,
        }
    }

    fn account_name(&self, index: usize) -> &str {
        match index.checked_sub(1).and_then(|i| self.others.get(i)) {
            Some((name, _)) => name,
            None => "default",
        }
    }

    fn of_server(&self, name: &str) -> usize {
        self.account_of.get(name).copied().unwrap_or(0)
    }

    fn note(&self, id: &str, account: usize) {
        lock(&self.seen).insert(id.to_owned(), account);
    }

    fn note_job(&self, job: &Job, account: usize) {
        let mut seen = lock(&self.seen);
        seen.insert(job.id.0.clone(), account);
        for slot in &job.servers {
            seen.insert(slot.source.0.clone(), account);
            if let Some(target) = &slot.target {
                seen.insert(target.0.clone(), account);
            }
        }
    }

    /// The account of an id seen before; else the first account that knows it (after a
    /// restart), remembered.
    async fn account_of_id<F, Fut>(&self, id: &str, probe: F) -> EngineResult<usize>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = EngineResult<()>>,
    {
        if let Some(account) = lock(&self.seen).get(id).copied() {
            return Ok(account);
        }
        // An account that cannot answer (throttled, access denied) does not stop the
        // others from being asked; its error is said if none knows the id.
        let mut failure: Option<EngineError> = None;
        for index in 0..self.count() {
            match probe(index).await {
                Ok(()) => {
                    self.note(id, index);
                    return Ok(index);
                }
                Err(err) if err.kind == ErrorKind::NotFound => {}
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            EngineError::new(
                ErrorKind::NotFound,
                format!("none of the {} MGN accounts knows {id}", self.count()),
            )
        }))
    }

    async fn source_account(&self, id: &SourceId) -> EngineResult<usize> {
        self.account_of_id(&id.0, |index| async move {
            self.engine(index).describe_source(id).await.map(drop)
        })
        .await
    }

    /// How each wave server matches in its own account, and the source servers no wave
    /// server matched in each account (named `ACCOUNT:s-...` beyond the default one).
    pub async fn match_report(&self, servers: &[Wanted]) -> EngineResult<MatchReport> {
        let mut report = MatchReport {
            lines: Vec::new(),
            unclaimed: Vec::new(),
        };
        let mut order: BTreeMap<String, usize> = BTreeMap::new();
        for (index, wanted) in servers.iter().enumerate() {
            order.insert(wanted.name.clone(), index);
        }
        for index in 0..self.count() {
            let name = self.account_name(index);
            let mine: Vec<Wanted> = servers
                .iter()
                .filter(|w| self.of_server(&w.name) == index)
                .cloned()
                .collect();
            let part = self.engine(index).match_report(&mine).await?;
            report.lines.extend(part.lines);
            report
                .unclaimed
                .extend(part.unclaimed.into_iter().map(|(id, host)| {
                    if index == 0 {
                        (id, host)
                    } else {
                        (format!("{name}:{id}"), host)
                    }
                }));
        }
        report
            .lines
            .sort_by_key(|(w, _)| order.get(&w.name).copied().unwrap_or(usize::MAX));
        Ok(report)
    }

    /// The parts of a job id: one per account.
    fn parts(id: &JobId) -> Vec<JobId> {
        id.0.split(JOINED).map(|p| JobId(p.to_owned())).collect()
    }

    /// The job as the source sees it when its account did not start its part: failed,
    /// with the reason.
    async fn refused_part(&self, id: &JobId, source: &SourceId, why: String) -> EngineResult<Job> {
        let mut job = self.describe_job(id).await?;
        job.servers.retain(|s| &s.source == source);
        job.servers.push(JobServer {
            source: source.clone(),
            status: LaunchStatus::Failed,
            target: None,
            message: Some(why),
        });
        Ok(job)
    }

    async fn job_account(&self, id: &JobId) -> EngineResult<usize> {
        self.account_of_id(&id.0, |index| async move {
            self.engine(index).describe_job(id).await.map(drop)
        })
        .await
    }
}

/// Jobs of several accounts as one: all their servers; started while one is, completed
/// when all are; created when the first was.
fn joined(jobs: Vec<Job>) -> Option<Job> {
    let first = jobs.first()?.clone();
    let status = if jobs.iter().all(|j| j.status == JobStatus::Completed) {
        JobStatus::Completed
    } else if jobs.iter().any(|j| j.status != JobStatus::Pending) {
        JobStatus::Started
    } else {
        JobStatus::Pending
    };
    Some(Job {
        id: JobId(
            jobs.iter()
                .map(|j| j.id.0.as_str())
                .collect::<Vec<_>>()
                .join(&JOINED.to_string()),
        ),
        kind: first.kind,
        status,
        created_at: jobs
            .iter()
            .map(|j| j.created_at)
            .min()
            .unwrap_or(first.created_at),
        servers: jobs.into_iter().flat_map(|j| j.servers).collect(),
    })
}

#[async_trait]
impl ReplicationEngine for MgnFleet {
    fn name(&self) -> &'static str {
        "mgn"
    }

    fn is_rehearsal(&self) -> bool {
        false
    }

    fn quotas(&self) -> Quotas {
        self.engine(0).quotas()
    }

    async fn find_source(&self, name: &str) -> EngineResult<Option<SourceServer>> {
        let account = self.of_server(name);
        let found = self.engine(account).find_source(name).await?;
        if let Some(source) = &found {
            self.note(&source.id.0, account);
        }
        Ok(found)
    }

    async fn register_source(&self, spec: &SourceSpec) -> EngineResult<SourceServer> {
        let account = self.of_server(&spec.name);
        let source = self.engine(account).register_source(spec).await?;
        self.note(&source.id.0, account);
        Ok(source)
    }

    async fn agent_install_unregistered(
        &self,
        spec: &SourceSpec,
    ) -> EngineResult<Option<AgentInstall>> {
        let account = self.of_server(&spec.name);
        self.engine(account).agent_install_unregistered(spec).await
    }

    async fn describe_source(&self, id: &SourceId) -> EngineResult<SourceServer> {
        let account = self.source_account(id).await?;
        self.engine(account).describe_source(id).await
    }

    async fn control_replication(
        &self,
        id: &SourceId,
        action: ReplicationAction,
    ) -> EngineResult<SourceServer> {
        let account = self.source_account(id).await?;
        self.engine(account).control_replication(id, action).await
    }

    async fn prepare_launch(
        &self,
        id: &SourceId,
        kind: LaunchKind,
        settings: &LaunchSettings,
    ) -> EngineResult<Option<String>> {
        let account = self.source_account(id).await?;
        self.engine(account)
            .prepare_launch(id, kind, settings)
            .await
    }

    async fn start_launch(
        &self,
        kind: LaunchKind,
        sources: &[SourceId],
        point: &PointInTime,
    ) -> EngineResult<Job> {
        let mut groups: BTreeMap<usize, Vec<SourceId>> = BTreeMap::new();
        for source in sources {
            let account = self.source_account(source).await?;
            groups.entry(account).or_default().push(source.clone());
        }
        let mut jobs = Vec::new();
        let mut refused: Vec<(Vec<SourceId>, EngineError)> = Vec::new();
        for (account, ids) in groups {
            match self.engine(account).start_launch(kind, &ids, point).await {
                Ok(job) => {
                    self.note_job(&job, account);
                    jobs.push(job);
                }
                Err(err) => refused.push((ids, err)),
            }
        }
        // Nothing started: the error as it is (a quota is waited for). Some accounts
        // started: their launches go on, and the servers of the others fail theirs with
        // the reason, so their tasks try again on their own.
        let Some(mut job) = joined(jobs) else {
            return Err(refused.into_iter().next().map_or_else(
                || EngineError::new(ErrorKind::Invalid, "a launch needs at least one server"),
                |(_, err)| err,
            ));
        };
        for (ids, err) in refused {
            for source in ids {
                lock(&self.failed)
                    .insert((job.id.0.clone(), source.0.clone()), err.message.clone());
                job.servers.push(JobServer {
                    source,
                    status: LaunchStatus::Failed,
                    target: None,
                    message: Some(format!("its account refused the launch: {}", err.message)),
                });
            }
        }
        Ok(job)
    }

    async fn describe_job(&self, id: &JobId) -> EngineResult<Job> {
        let mut jobs = Vec::new();
        for part in Self::parts(id) {
            let account = self.job_account(&part).await?;
            let job = self.engine(account).describe_job(&part).await?;
            self.note_job(&job, account);
            jobs.push(job);
        }
        joined(jobs).ok_or_else(|| EngineError::new(ErrorKind::NotFound, format!("no job {id}")))
    }

    async fn describe_job_for(&self, id: &JobId, source: &SourceId) -> EngineResult<Job> {
        let refused = lock(&self.failed)
            .get(&(id.0.clone(), source.0.clone()))
            .cloned();
        if let Some(reason) = refused {
            return self
                .refused_part(
                    id,
                    source,
                    format!("its account refused the launch: {reason}"),
                )
                .await;
        }
        let account = self.source_account(source).await?;
        // The part of the job in the source's account.
        for part in Self::parts(id) {
            if self.job_account(&part).await? == account {
                let job = self.engine(account).describe_job_for(&part, source).await?;
                self.note_job(&job, account);
                return Ok(job);
            }
        }
        // The launch did not start in the source's account (a refusal this process
        // no longer remembers): its launch failed, to be tried again.
        self.refused_part(
            id,
            source,
            format!("job {id} has no launch in the account of {source}: its account refused it"),
        )
        .await
    }

    async fn jobs_for_source(&self, id: &SourceId) -> EngineResult<Vec<Job>> {
        let account = self.source_account(id).await?;
        let jobs = self.engine(account).jobs_for_source(id).await?;
        for job in &jobs {
            self.note_job(job, account);
        }
        Ok(jobs)
    }

    async fn describe_target(&self, id: &TargetId) -> EngineResult<Target> {
        let account = self
            .account_of_id(&id.0, |index| async move {
                self.engine(index).describe_target(id).await.map(drop)
            })
            .await?;
        self.engine(account).describe_target(id).await
    }

    async fn terminate_targets(&self, id: &SourceId, kind: LaunchKind) -> EngineResult<()> {
        let account = self.source_account(id).await?;
        self.engine(account).terminate_targets(id, kind).await
    }

    async fn finalize_cutover(&self, id: &SourceId) -> EngineResult<()> {
        let account = self.source_account(id).await?;
        self.engine(account).finalize_cutover(id).await
    }

    async fn change_life_cycle(&self, id: &SourceId, state: LifeCycle) -> EngineResult<()> {
        let account = self.source_account(id).await?;
        self.engine(account).change_life_cycle(id, state).await
    }

    async fn archive(&self, id: &SourceId) -> EngineResult<()> {
        let account = self.source_account(id).await?;
        self.engine(account).archive(id).await
    }

    async fn recovery_points(&self, id: &SourceId) -> EngineResult<Vec<RecoveryPoint>> {
        let account = self.source_account(id).await?;
        self.engine(account).recovery_points(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, status: JobStatus, at: i64) -> Job {
        Job {
            id: JobId(id.to_owned()),
            kind: LaunchKind::Test,
            status,
            created_at: jiff::Timestamp::from_second(at).unwrap_or_default(),
            servers: Vec::new(),
        }
    }

    #[test]
    fn the_jobs_of_several_accounts_are_followed_as_one() {
        let one = joined(vec![
            job("mgnjob-a", JobStatus::Completed, 20),
            job("mgnjob-b", JobStatus::Pending, 10),
        ])
        .unwrap_or_else(|| job("none", JobStatus::Pending, 0));
        assert_eq!(one.id.0, "mgnjob-a+mgnjob-b");
        assert_eq!(one.status, JobStatus::Started);
        assert_eq!(one.created_at.as_second(), 10);
        assert_eq!(
            MgnFleet::parts(&one.id),
            [JobId("mgnjob-a".to_owned()), JobId("mgnjob-b".to_owned())]
        );
        assert!(joined(Vec::new()).is_none());
    }
}
