//! The [`TrainingBackend`] contract as one suite every implementation's tests run against their
//! backend (feature `test-support`), as the database and blob-store suites are: the same story
//! on each, so a new backend is held to what the engine relies on.
//!
//! What it checks, each check cleaning up what it launched:
//! - launch → observe `Running` → `terminate(Stop)` until confirmed gone → observe says it ended
//!   and is gone → `terminate` again is fine and still gone;
//! - `observe` answers one entry per instance asked, in the order asked (repeats and gone
//!   instances included), and nothing for nothing;
//! - a backend that can list its instances (`list_instances` is `Some`) does not make a second
//!   instance when a launch is retried (`retry: true`) after an answer was lost; one that cannot
//!   (a process of this host, whose launch cannot lose its answer) is exempt;
//! - `list_instances(prefix)` finds the instances named with `prefix` and only those.
//!
//! The backend under test must run an instance until it is told to stop (an image or program
//! that keeps running), and have room for three instances at once.

use std::time::{Duration, Instant};

use loraforge_domain::LoraId;
use loraforge_domain::run::instance_name;

use crate::{Ending, Instance, Launch, Launched, Observed, TrainingBackend};

/// One backend under test.
pub struct Subject<'a> {
    pub backend: &'a dyn TrainingBackend,
    /// Prefix of every instance name the suite makes (unique per run, e.g. `conf-<random>-`).
    pub prefix: String,
    /// How long an instance may take to show as running, or to be confirmed gone.
    pub patience: Duration,
}

impl<'a> Subject<'a> {
    pub fn new(backend: &'a dyn TrainingBackend, prefix: impl Into<String>) -> Self {
        Self {
            backend,
            prefix: prefix.into(),
            patience: Duration::from_secs(20),
        }
    }

    /// Every check, in turn. Panics with what broke.
    pub async fn run_all(&self) {
        self.launch_observe_and_end().await;
        self.observe_keeps_order_and_length().await;
        self.retried_launch_makes_no_second_instance().await;
        self.list_finds_only_the_prefix().await;
    }

    fn launch_of(&self, prefix: &str, lora: LoraId, attempt: u32, retry: bool) -> Launch {
        Launch {
            lora_id: lora,
            attempt,
            instance_name: instance_name(prefix, lora, attempt),
            server: "http://127.0.0.1:9".to_owned(),
            token: "conformance-token".to_owned(),
            retry,
            task: crate::backend::Task::Train,
        }
    }

    async fn launch(&self, launch: &Launch) -> Instance {
        let launched: Launched = self
            .backend
            .launch(launch)
            .await
            .unwrap_or_else(|e| panic!("{}: launch {launch:?}: {e}", self.backend.name()));
        assert!(
            !launched.provider_id.is_empty(),
            "{}: a launch names its instance",
            self.backend.name()
        );
        Instance {
            provider_id: launched.provider_id,
            instance_name: launch.instance_name.clone(),
            lora_id: launch.lora_id,
            attempt: launch.attempt,
        }
    }

    async fn observe(&self, instances: &[Instance]) -> Vec<Observed> {
        let seen = self
            .backend
            .observe(instances)
            .await
            .unwrap_or_else(|e| panic!("{}: observe: {e}", self.backend.name()));
        assert_eq!(
            seen.len(),
            instances.len(),
            "{}: observe answers once per instance asked",
            self.backend.name()
        );
        seen
    }

    /// Observes `instance` until it is running.
    async fn until_running(&self, instance: &Instance) {
        let deadline = Instant::now() + self.patience;
        loop {
            match &self.observe(std::slice::from_ref(instance)).await[0] {
                Observed::Running => return,
                ended => assert!(
                    Instant::now() < deadline,
                    "{}: {} never ran: {ended:?}",
                    self.backend.name(),
                    instance.instance_name
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Terminates `instance` until the backend confirms it gone.
    async fn end(&self, instance: &Instance) {
        let deadline = Instant::now() + self.patience;
        loop {
            let t = self
                .backend
                .terminate(instance, Ending::Stop)
                .await
                .unwrap_or_else(|e| panic!("{}: terminate: {e}", self.backend.name()));
            if t.gone {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {} was never confirmed gone",
                self.backend.name(),
                instance.instance_name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn is_gone(seen: &Observed) -> bool {
        matches!(seen, Observed::Ended { gone: true, .. })
    }

    pub async fn launch_observe_and_end(&self) {
        let name = self.backend.name().to_owned();
        let i = self
            .launch(&self.launch_of(&self.prefix, LoraId::new(), 1, false))
            .await;
        self.until_running(&i).await;
        self.end(&i).await;
        let seen = self.observe(std::slice::from_ref(&i)).await;
        assert!(
            Self::is_gone(&seen[0]),
            "{name}: an instance confirmed gone observes as ended and gone: {seen:?}"
        );
        for ending in [Ending::Stop, Ending::Finished] {
            let again = self
                .backend
                .terminate(&i, ending)
                .await
                .unwrap_or_else(|e| {
                    panic!("{name}: terminating a gone instance ({ending:?}): {e}")
                });
            assert!(
                again.gone,
                "{name}: a gone instance stays gone ({ending:?})"
            );
        }
    }

    pub async fn observe_keeps_order_and_length(&self) {
        let name = self.backend.name().to_owned();
        assert!(
            self.observe(&[]).await.is_empty(),
            "{name}: nothing asked, nothing answered"
        );
        let a = self
            .launch(&self.launch_of(&self.prefix, LoraId::new(), 1, false))
            .await;
        let b = self
            .launch(&self.launch_of(&self.prefix, LoraId::new(), 2, false))
            .await;
        self.until_running(&a).await;
        self.until_running(&b).await;
        self.end(&b).await;
        let asked = [b.clone(), a.clone(), b.clone(), a.clone()];
        let seen = self.observe(&asked).await;
        assert!(
            Self::is_gone(&seen[0])
                && seen[1] == Observed::Running
                && Self::is_gone(&seen[2])
                && seen[3] == Observed::Running,
            "{name}: observe answers in the order asked: {seen:?}"
        );
        self.end(&a).await;
    }

    pub async fn retried_launch_makes_no_second_instance(&self) {
        let name = self.backend.name().to_owned();
        let listing = self
            .backend
            .list_instances(&self.prefix)
            .await
            .unwrap_or_else(|e| panic!("{name}: list_instances: {e}"));
        if listing.is_none() {
            // Processes of this host: a launch cannot lose its answer, and the engine finds its
            // instances through its own records.
            return;
        }
        let lora = LoraId::new();
        let first = self
            .launch(&self.launch_of(&self.prefix, lora, 3, false))
            .await;
        // The engine never heard of `first` (its answer was lost) and launches the attempt again.
        let again = self
            .launch(&self.launch_of(&self.prefix, lora, 3, true))
            .await;
        assert_eq!(
            again.provider_id, first.provider_id,
            "{name}: a retried launch takes the instance the lost answer made"
        );
        let listed = self
            .backend
            .list_instances(&first.instance_name)
            .await
            .unwrap_or_else(|e| panic!("{name}: list_instances: {e}"))
            .unwrap_or_default();
        assert_eq!(
            listed,
            [(first.provider_id.clone(), first.instance_name.clone())],
            "{name}: one instance for the attempt"
        );
        self.end(&first).await;
    }

    pub async fn list_finds_only_the_prefix(&self) {
        let name = self.backend.name().to_owned();
        // Shares all but the prefix's last character, so a sloppy match would take it.
        let other_prefix = format!("{}x-", self.prefix.trim_end_matches('-'));
        let mine = self
            .launch(&self.launch_of(&self.prefix, LoraId::new(), 1, false))
            .await;
        let other = self
            .launch(&self.launch_of(&other_prefix, LoraId::new(), 1, false))
            .await;
        let listed = self
            .backend
            .list_instances(&self.prefix)
            .await
            .unwrap_or_else(|e| panic!("{name}: list_instances: {e}"));
        if let Some(listed) = listed {
            assert!(
                listed.contains(&(mine.provider_id.clone(), mine.instance_name.clone())),
                "{name}: the listing finds {}: {listed:?}",
                mine.instance_name
            );
            assert!(
                listed.iter().all(|(_, n)| n.starts_with(&self.prefix)),
                "{name}: the listing holds only names with the prefix: {listed:?}"
            );
        }
        self.end(&mine).await;
        self.end(&other).await;
        if let Some(listed) = self
            .backend
            .list_instances(&self.prefix)
            .await
            .unwrap_or_else(|e| panic!("{name}: list_instances: {e}"))
        {
            assert!(
                listed.iter().all(|(id, _)| *id != mine.provider_id),
                "{name}: a gone instance is not listed: {listed:?}"
            );
        }
    }
}
