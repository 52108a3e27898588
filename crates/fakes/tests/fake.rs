//! The fake as raw HTTP clients see it: both auth styles of each API, runpod-python's inlined
//! GraphQL, process clean-up on terminate and on drop, and 1,000 idle pods.

use std::time::{Duration, Instant};

use loraforge_fakes::{
    EndpointSpec, FakeConfig, FakePodStatus, FakeRunpod, ImageSpec, NO_CAPACITY_MESSAGE,
};
use serde_json::{Value, json};

const KEY: &str = "rpa_fake_key";
const GPU: &str = "NVIDIA RTX A6000";

fn process_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn gql(http: &reqwest::Client, url: &str, query: &str) -> (u16, Value) {
    let response = http
        .post(url)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn graphql_accepts_bearer_or_api_key_in_the_query_and_nothing_else() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY)).await;
    let http = reqwest::Client::new();
    let query = json!({"query": "query { myself { pods { id } } }"});

    let by_query = http
        .post(format!("{}?api_key={KEY}", fake.graphql_url()))
        .json(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    assert_eq!(
        by_query.json::<Value>().await.unwrap(),
        json!({"data": {"myself": {"pods": []}}})
    );
    let by_bearer = http
        .post(fake.graphql_url())
        .bearer_auth(KEY)
        .json(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(by_bearer.status(), 200);

    for request in [
        http.post(fake.graphql_url()).json(&query),
        http.post(fake.graphql_url())
            .bearer_auth("wrong")
            .json(&query),
        http.post(fake.graphql_url())
            .header("Authorization", KEY)
            .json(&query),
        http.post(format!("{}?api_key=wrong", fake.graphql_url()))
            .json(&query),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"errors": [{"message": "Unauthorized"}]})
        );
    }
}

#[tokio::test]
async fn serverless_accepts_bearer_or_the_raw_key() {
    let fake = FakeRunpod::start(
        FakeConfig::new(KEY).with_endpoint(EndpointSpec::new("ep", ImageSpec::shell("true"))),
    )
    .await;
    let http = reqwest::Client::new();
    let health = format!("{}/ep/health", fake.serverless_base_url());
    for auth in [format!("Bearer {KEY}"), KEY.to_owned()] {
        let response = http
            .get(&health)
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["workers"], json!({"idle": 4, "running": 0}));
        assert_eq!(body["jobs"]["completed"], 0);
    }
    for auth in [None, Some("Bearer wrong"), Some("wrong")] {
        let mut request = http.get(&health);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    let response = http
        .get(format!("{}/ep/status/nope", fake.serverless_base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn runpod_python_style_inline_graphql_works_end_to_end() {
    let mut config = FakeConfig::new(KEY).with_gpu(GPU, 1, "0.79");
    config.boot_delay = Duration::ZERO;
    let fake = FakeRunpod::start(config).await;
    let http = reqwest::Client::new();
    let url = format!("{}?api_key={KEY}", fake.graphql_url());

    let (status, body) = gql(&http, &url, r#"mutation { podFindAndDeployOnDemand(input: { cloudType: ALL, gpuCount: 1, volumeInGb: 40,
        containerDiskInGb: 40, gpuTypeId: "NVIDIA RTX A6000", name: "trainer", imageName: "runpod/pytorch", ports: "8888/http",
        volumeMountPath: "/workspace", env: [{ key: "JUPYTER_PASSWORD", value: "pw" }, { key: "Q", value: "a \"quoted\" value" }] })
        { id imageName env machineId machine { podHostId } } }"#).await;
    assert_eq!(status, 200, "{body}");
    let pod = &body["data"]["podFindAndDeployOnDemand"];
    let id = pod["id"].as_str().unwrap().to_owned();
    assert_eq!(
        pod["env"],
        json!(["JUPYTER_PASSWORD=pw", "Q=a \"quoted\" value"])
    );
    assert_eq!(pod["imageName"], "runpod/pytorch");
    assert_eq!(
        pod["machine"]["podHostId"],
        format!("{id}-{}", pod["machineId"].as_str().unwrap())
    );
    assert_eq!(fake.pods()[0].cloud_type, "ALL");

    let (_, body) = gql(&http, &url, &format!(r#"query {{ pod(input: {{podId: "{id}"}}) {{ id desiredStatus costPerHr runtime {{ ports {{ privatePort type }} }} }} }}"#)).await;
    assert_eq!(body["data"]["pod"]["desiredStatus"], "RUNNING");
    assert_eq!(body["data"]["pod"]["costPerHr"], json!(0.79));
    assert_eq!(
        body["data"]["pod"]["runtime"]["ports"][0]["privatePort"],
        8888
    );

    // Capacity is gone: the documented message, HTTP 200, data null.
    let (status, body) = gql(&http, &url, r#"mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA RTX A6000", imageName: "x", name: "y"}) { id } }"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"errors": [{"message": NO_CAPACITY_MESSAGE}], "data": {"podFindAndDeployOnDemand": null}})
    );

    let (_, body) = gql(
        &http,
        &url,
        &format!(r#"mutation {{ podTerminate(input: {{podId: "{id}"}}) }}"#),
    )
    .await;
    assert_eq!(body, json!({"data": {"podTerminate": null}}));
    let (_, body) = gql(
        &http,
        &url,
        &format!(r#"query {{ pod(input: {{podId: "{id}"}}) {{ id }} }}"#),
    )
    .await;
    assert_eq!(body, json!({"data": {"pod": null}}));

    let (status, body) = gql(&http, &url, "mutation { podTerminate(input: {podId: ").await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Syntax Error"),
        "{body}"
    );
}

/// A provider hard down: every request answers 503 before reaching the API, so no pod is made
/// and no call is logged, but each request is in the request log with its operation and status.
#[tokio::test]
async fn a_hard_down_fake_refuses_everything_and_logs_each_request() {
    let fake = FakeRunpod::start(FakeConfig::new(KEY).with_gpu(GPU, 1, "0.79")).await;
    fake.inject_status(u32::MAX, 503, None);
    let http = reqwest::Client::new();
    let url = format!("{}?api_key={KEY}", fake.graphql_url());
    let deploy = r#"mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA RTX A6000", imageName: "x", name: "y"}) { id } }"#;
    for query in [deploy, "query { myself { pods { id } } }", deploy] {
        let (status, _) = gql(&http, &url, query).await;
        assert_eq!(status, 503);
    }
    let health = http
        .get(format!("{}/ep/health", fake.serverless_base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let seen: Vec<(String, u16)> = fake
        .requests()
        .into_iter()
        .map(|r| (r.operation, r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("podFindAndDeployOnDemand".to_owned(), 503),
            ("myself".to_owned(), 503),
            ("podFindAndDeployOnDemand".to_owned(), 503),
            ("health".to_owned(), 503),
        ]
    );
    assert!(fake.calls().is_empty() && fake.pods().is_empty());

    // Back up: answered requests are logged too.
    fake.inject_status(0, 503, None);
    let (status, _) = gql(&http, &url, deploy).await;
    assert_eq!(status, 200);
    let last = fake.requests().pop().unwrap();
    assert_eq!(
        (last.operation.as_str(), last.status),
        ("podFindAndDeployOnDemand", 200)
    );
    assert_eq!(fake.pods().len(), 1);
}

#[tokio::test]
async fn terminate_escalates_to_sigkill_after_the_grace() {
    let mut config = FakeConfig::new(KEY).with_gpu(GPU, 1, "0.79").with_image(
        "stubborn",
        ImageSpec::shell("trap '' TERM; while true; do sleep 0.05; done"),
    );
    config.kill_grace = Duration::from_millis(300);
    let fake = FakeRunpod::start(config).await;
    let http = reqwest::Client::new();
    let url = format!("{}?api_key={KEY}", fake.graphql_url());
    let (_, body) = gql(&http, &url, r#"mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA RTX A6000", imageName: "stubborn", name: "s"}) { id } }"#).await;
    let id = body["data"]["podFindAndDeployOnDemand"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = fake.pod(&id).unwrap().pid.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    gql(
        &http,
        &url,
        &format!(r#"mutation {{ podTerminate(input: {{podId: "{id}"}}) }}"#),
    )
    .await;
    wait_until(Duration::from_secs(3), "SIGKILL", || {
        fake.live_processes() == 0
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it ignored SIGTERM until the grace ran out"
    );
    assert!(!process_running(pid));
    assert_eq!(fake.pod(&id).unwrap().status, FakePodStatus::Terminated);
}

#[tokio::test]
async fn restart_on_exit_keeps_the_pod_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = FakeConfig::new(KEY).with_gpu(GPU, 1, "0.79").with_image(
        "flaky",
        ImageSpec::shell(r#"echo run >> "$OUT/runs"; sleep 0.1"#)
            .with_env("OUT", dir.path().to_str().unwrap()),
    );
    config.restart_on_exit = true;
    config.boot_delay = Duration::ZERO;
    let fake = FakeRunpod::start(config).await;
    let http = reqwest::Client::new();
    let url = format!("{}?api_key={KEY}", fake.graphql_url());
    let (_, body) = gql(&http, &url, r#"mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA RTX A6000", imageName: "flaky", name: "f"}) { id } }"#).await;
    let id = body["data"]["podFindAndDeployOnDemand"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runs = dir.path().join("runs");
    wait_until(Duration::from_secs(4), "three runs", || {
        std::fs::read_to_string(&runs)
            .map(|s| s.lines().count() >= 3)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(fake.pod(&id).unwrap().status, FakePodStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_fake_kills_every_process_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_owned();
    let config = FakeConfig::new(KEY)
        .with_gpu(GPU, 4, "0.79")
        // A shell with a child in its group that ignores SIGTERM: only SIGKILL to the group ends both.
        .with_image(
            "tree",
            ImageSpec::shell(
                r#"sh -c 'trap "" TERM; echo $$ > "$OUT/$RUNPOD_POD_ID.child"; sleep 30' & wait"#,
            )
            .with_env("OUT", &out),
        )
        .with_endpoint(EndpointSpec::new("ep", ImageSpec::shell("sleep 30")));
    let fake = FakeRunpod::start(config).await;
    let http = reqwest::Client::new();
    let url = format!("{}?api_key={KEY}", fake.graphql_url());
    let mut child_files = Vec::new();
    for name in ["a", "b"] {
        let query = format!(
            r#"mutation {{ podFindAndDeployOnDemand(input: {{gpuTypeId: "NVIDIA RTX A6000", imageName: "tree", name: "{name}"}}) {{ id }} }}"#
        );
        let (_, body) = gql(&http, &url, &query).await;
        let id = body["data"]["podFindAndDeployOnDemand"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        child_files.push(dir.path().join(format!("{id}.child")));
    }
    let run = http
        .post(format!("{}/ep/run", fake.serverless_base_url()))
        .bearer_auth(KEY)
        .json(&json!({"input": {"server": "s", "lora_id": "l", "token": "t"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 200);
    wait_until(Duration::from_secs(3), "grandchildren", || {
        child_files.iter().all(|f| f.exists())
    })
    .await;
    wait_until(Duration::from_secs(3), "three processes", || {
        fake.live_processes() == 3
    })
    .await;
    let mut pids = fake.live_pids();
    for file in &child_files {
        let text = std::fs::read_to_string(file).unwrap();
        pids.push(text.trim().parse().unwrap());
    }
    assert!(pids.iter().all(|&pid| process_running(pid)));

    drop(fake);
    // The direct children are reaped by the drop itself; grandchildren die with their group and
    // are reaped by whoever adopted them, so give them a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&pid| process_running(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&pid| process_running(pid))
        .collect();
    assert!(left.is_empty(), "processes outlived the fake: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_pods_are_cheap() {
    let mut config = FakeConfig::new(KEY)
        .with_gpu(GPU, 1000, "0.79")
        .with_image("runpod/idle", ImageSpec::idle());
    config.boot_delay = Duration::ZERO;
    let fake = FakeRunpod::start(config).await;
    let http = reqwest::Client::new();
    let url = format!("{}?api_key={KEY}", fake.graphql_url());
    let started = Instant::now();
    let query = "mutation Deploy($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id } }";
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            for i in 0..125 {
                let variables = json!({"input": {"gpuTypeId": GPU, "imageName": "runpod/idle", "name": format!("bench-{worker}-{i}")}});
                let response = http.post(&url).json(&json!({"query": query, "variables": variables})).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (_, body) = gql(
        &http,
        &url,
        "{ myself { pods { id desiredStatus runtime { uptimeInSeconds } } } }",
    )
    .await;
    let pods = body["data"]["myself"]["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1000);
    assert!(
        pods.iter()
            .all(|p| p["desiredStatus"] == "RUNNING" && !p["runtime"].is_null())
    );
    assert_eq!(fake.live_processes(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let (_, body) = gql(&http, &url, r#"mutation { podFindAndDeployOnDemand(input: {gpuTypeId: "NVIDIA RTX A6000", imageName: "runpod/idle"}) { id } }"#).await;
    assert_eq!(body["errors"][0]["message"], NO_CAPACITY_MESSAGE);
}
