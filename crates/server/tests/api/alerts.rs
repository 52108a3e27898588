//! Operator alerts: the admin routes (list, `?open=true`, paging, ack) and delivery to loopback
//! fakes of a Slack incoming webhook, a JSON webhook and an SMTP server, with retries after a
//! failure, dedup within the cooldown and a new delivery after an acknowledgement.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use loraforge_domain::Clock;
use loraforge_notify::{JsonWebhookSender, Mailer, SlackSender};
use loraforge_server::alerts::{AlertChannels, DeliveryPolicy, deliver_alerts};

use crate::helpers::*;

const HOUR: Duration = Duration::from_secs(3600);

/// A webhook receiver on loopback: records every JSON body and answers 500 to the first
/// `fail_first` of them.
#[derive(Clone)]
struct FakeHook {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn fake_hook(fail_first: usize) -> FakeHook {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |Json(body): Json<Value>| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(body);
                if seen.len() <= fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeHook { url, bodies }
}

/// One message an SMTP client handed over.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A tiny SMTP server on loopback speaking EHLO, MAIL, RCPT, DATA, RSET, NOOP and QUIT;
/// records every message.
pub async fn fake_smtp() -> (String, Arc<Mutex<Vec<Mail>>>) {
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("smtp://{}", listener.local_addr().unwrap());
    let store = mails.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read);
                let _ = write.write_all(b"220 fake.smtp ESMTP\r\n").await;
                let (mut from, mut to) = (String::new(), Vec::new());
                loop {
                    let mut line = String::new();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-fake.smtp\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        from = line[10..].trim().to_owned();
                        b"250 OK\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        to.push(line[8..].trim().to_owned());
                        b"250 OK\r\n"
                    } else if upper.starts_with("DATA") {
                        let _ = write.write_all(b"354 end with .\r\n").await;
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            if lines.read_line(&mut l).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if l == ".\r\n" || l == ".\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        store.lock().unwrap().push(Mail {
                            from: std::mem::take(&mut from),
                            to: std::mem::take(&mut to),
                            data,
                        });
                        b"250 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, mails)
}

fn policy() -> DeliveryPolicy {
    DeliveryPolicy {
        call_timeout: Duration::from_secs(10),
        ..DeliveryPolicy::default()
    }
}

async fn delivery_story(engine: Engine) {
    let app = spawn_app_with(engine, |_| {}).await;
    let slack = fake_hook(1).await;
    let hook = fake_hook(0).await;
    let (smtp, mails) = fake_smtp().await;
    let channels = AlertChannels {
        slack: Some(SlackSender::new(&slack.url, Duration::from_secs(5)).unwrap()),
        webhook: Some(JsonWebhookSender::new(&hook.url, Duration::from_secs(5)).unwrap()),
        email: Some((
            Mailer::new(
                &smtp,
                "loraforge <alerts@example.com>",
                Duration::from_secs(5),
            )
            .unwrap(),
            vec!["ops@example.com".into()],
        )),
    };
    let t0 = app.clock.now();
    let raised = app
        .repo
        .raise_alert("orphan_instance", "pod-7", "pod-7 would not end", HOUR, t0)
        .await
        .unwrap();

    // Round 1: the webhook and e-mail deliver; Slack answers 500 and is retried later.
    let r = deliver_alerts(app.repo.as_ref(), &channels, &policy(), t0).await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.delivered.len(), 2, "{r:?}");
    assert_eq!(r.failed, vec![(raised.id, "slack")]);
    let body = hook.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["id"], raised.id);
    assert_eq!(body["kind"], "orphan_instance");
    assert_eq!(body["subject"], "pod-7");
    assert_eq!(body["message"], "pod-7 would not end");
    assert_eq!(body["count"], 1);
    assert!(body["first_seen"].is_string() && body["last_seen"].is_string());
    {
        let mails = mails.lock().unwrap();
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].to, vec!["<ops@example.com>".to_owned()]);
        assert!(mails[0].from.contains("alerts@example.com"));
        assert!(
            mails[0]
                .data
                .contains("Subject: [loraforge] orphan_instance: pod-7")
        );
        assert!(mails[0].data.contains("pod-7 would not end"));
    }

    // Before the backoff (1 min) nothing is sent; after it Slack gets it.
    let r = deliver_alerts(
        app.repo.as_ref(),
        &channels,
        &policy(),
        t0 + chrono::Duration::seconds(30),
    )
    .await;
    assert!(r.delivered.is_empty() && r.failed.is_empty(), "{r:?}");
    let t1 = t0 + chrono::Duration::seconds(61);
    let r = deliver_alerts(app.repo.as_ref(), &channels, &policy(), t1).await;
    assert_eq!(r.delivered, vec![(raised.id, "slack")]);
    let slack_bodies = slack.bodies.lock().unwrap().clone();
    assert_eq!(slack_bodies.len(), 2);
    let text = slack_bodies[1]["text"].as_str().unwrap();
    assert!(
        text.contains("orphan_instance") && text.contains("pod-7"),
        "{text}"
    );

    // The same trouble again within the cooldown: counted, not sent again.
    let again = app
        .repo
        .raise_alert("orphan_instance", "pod-7", "still there", HOUR, t1)
        .await
        .unwrap();
    assert_eq!((again.id, again.new, again.count), (raised.id, false, 2));
    let r = deliver_alerts(app.repo.as_ref(), &channels, &policy(), t1).await;
    assert!(r.delivered.is_empty(), "{r:?}");
    assert_eq!(hook.bodies.lock().unwrap().len(), 1);

    // Acknowledged: the next occurrence is a new alert, delivered again on every channel.
    app.repo.ack_alert(raised.id, "admin", t1).await.unwrap();
    let next = app
        .repo
        .raise_alert(
            "orphan_instance",
            "pod-7",
            "back again",
            HOUR,
            t1 + chrono::Duration::seconds(5),
        )
        .await
        .unwrap();
    assert!(next.new);
    let r = deliver_alerts(
        app.repo.as_ref(),
        &channels,
        &policy(),
        t1 + chrono::Duration::seconds(5),
    )
    .await;
    assert_eq!(r.delivered.len(), 3, "{r:?}");
    assert_eq!(hook.bodies.lock().unwrap().len(), 2);
    assert_eq!(mails.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_delivered_retried_and_deduplicated_sqlite() {
    delivery_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_delivered_retried_and_deduplicated_postgres() {
    delivery_story(Engine::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_keeps_failing_is_given_up() {
    let app = spawn_app().await;
    let slack = fake_hook(usize::MAX).await;
    let channels = AlertChannels {
        slack: Some(SlackSender::new(&slack.url, Duration::from_secs(5)).unwrap()),
        ..AlertChannels::default()
    };
    let policy = DeliveryPolicy {
        max_attempts: 3,
        ..policy()
    };
    let t0 = app.clock.now();
    let a = app.repo.raise_alert("k", "s", "m", HOUR, t0).await.unwrap();
    let mut at = t0;
    for _ in 0..2 {
        let r = deliver_alerts(app.repo.as_ref(), &channels, &policy, at).await;
        assert_eq!(r.failed, vec![(a.id, "slack")]);
        at += chrono::Duration::hours(3);
    }
    let r = deliver_alerts(app.repo.as_ref(), &channels, &policy, at).await;
    assert_eq!(r.gave_up, vec![(a.id, "slack")]);
    let r = deliver_alerts(
        app.repo.as_ref(),
        &channels,
        &policy,
        at + chrono::Duration::hours(3),
    )
    .await;
    assert!(r.failed.is_empty() && r.gave_up.is_empty(), "{r:?}");
    assert_eq!(slack.bodies.lock().unwrap().len(), 3);
    let d = app.repo.alert_deliveries(a.id).await.unwrap();
    assert_eq!(d[0].attempts, 3);
    assert!(d[0].gave_up_at.is_some());
    assert!(d[0].last_error.as_deref().unwrap().contains("500"), "{d:?}");
}

#[tokio::test]
async fn admins_list_page_and_acknowledge_alerts() {
    let app = spawn_app().await;
    let user = app.user();
    let admin = app.user_with(Some("ops@example.com".into()), true);
    let t0 = app.clock.now();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.repo
                .raise_alert(
                    "training_too_long",
                    &format!("lora-{i}"),
                    "over 2 h",
                    HOUR,
                    t0,
                )
                .await
                .unwrap()
                .id,
        );
    }
    app.repo
        .raise_alert("training_too_long", "lora-0", "still over 2 h", HOUR, t0)
        .await
        .unwrap();

    assert_eq!(app.get(&user, "/api/v1/admin/alerts").await.status(), 403);
    let r = app
        .post_json(
            &user,
            &format!("/api/v1/admin/alerts/{}/ack", ids[0]),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 403);

    let r = app.get(&admin, "/api/v1/admin/alerts?limit=2").await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let got: Vec<i64> = page["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    assert_eq!(page["next_before"], ids[1]);
    let r = app
        .get(
            &admin,
            &format!("/api/v1/admin/alerts?limit=2&before={}", ids[1]),
        )
        .await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["alerts"][0]["id"], ids[0]);
    assert_eq!(page["alerts"][0]["count"], 2);
    assert_eq!(page["alerts"][0]["message"], "still over 2 h");
    assert!(page["next_before"].is_null());

    let r = app
        .post_json(
            &admin,
            &format!("/api/v1/admin/alerts/{}/ack", ids[1]),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let acked: Value = r.json().await.unwrap();
    assert_eq!(acked["acknowledged_by"], admin.id.to_string());
    assert!(acked["acknowledged_at"].is_string());

    let r = app.get(&admin, "/api/v1/admin/alerts?open=true").await;
    let open: Value = r.json().await.unwrap();
    let got: Vec<i64> = open["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2], ids[0]]);

    let e = error_of(
        app.post_json(&admin, "/api/v1/admin/alerts/999999/ack", &json!({}))
            .await,
        404,
    )
    .await;
    assert_eq!(e["code"], "not_found");
    let e = error_of(
        app.post_json(&admin, "/api/v1/admin/alerts/abc/ack", &json!({}))
            .await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_path");
    let e = error_of(app.get(&admin, "/api/v1/admin/alerts?limit=0").await, 400).await;
    assert_eq!(e["code"], "invalid_query");
    let e = error_of(
        app.get(&admin, "/api/v1/admin/alerts?open=maybe").await,
        400,
    )
    .await;
    assert_eq!(e["code"], "invalid_query");
}

async fn finish(app: &TestApp, id: &str, status: loraforge_domain::TrainingStatus) {
    use loraforge_db::EventDetail;
    use loraforge_domain::StatusEvent as E;
    let id: loraforge_domain::LoraId = id.parse().unwrap();
    let path: &[E] = if status == loraforge_domain::TrainingStatus::Completed {
        &[E::Enqueue, E::Start, E::BeginValidation, E::Complete]
    } else {
        &[E::Fail]
    };
    for ev in path {
        app.repo
            .apply_event(
                id,
                *ev,
                EventDetail::because("the trainer ran out of memory"),
                app.clock.now(),
            )
            .await
            .unwrap();
    }
}

async fn creator_mail_story(engine: Engine) {
    use loraforge_domain::TrainingStatus;
    use loraforge_server::creator_mail::mail_creators;

    let app = spawn_app_with(engine, |s| s.finish_mails = true).await;
    let (smtp, mails) = fake_smtp().await;
    let mailer = Mailer::new(
        &smtp,
        "loraforge <noreply@example.com>",
        Duration::from_secs(5),
    )
    .unwrap();
    let public = url::Url::parse("https://loras.example.com/").unwrap();
    let day = Duration::from_secs(24 * 3600);
    let jane = app.user_with(Some("jane@example.com".into()), false);
    let bob = app.user_with(Some("bob@example.com".into()), false);

    let r = app.get(&jane, "/api/v1/me/notifications").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"email_on_finish": true, "email_deliverable": true})
    );
    // Bob turns them off.
    let r = app
        .http
        .put(app.url("/api/v1/me/notifications"))
        .bearer_auth(&bob.token)
        .json(&json!({"email_on_finish": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["email_on_finish"], false);
    let bad = app
        .http
        .put(app.url("/api/v1/me/notifications"))
        .bearer_auth(&bob.token)
        .json(&json!({"email_on_finish": "yes"}))
        .send()
        .await
        .unwrap();
    let e = error_of(bad, 422).await;
    assert_eq!(e["code"], "invalid_notifications");

    let ds = app.dataset(&jane).await;
    let done = app.create_ok(&jane, "Jane ready", &ds).await;
    let broke = app.create_ok(&jane, "Jane broke", &ds).await;
    let ds_bob = app.dataset(&bob).await;
    let bobs = app.create_ok(&bob, "Bob ready", &ds_bob).await;
    finish(&app, &done, TrainingStatus::Completed).await;
    finish(&app, &broke, TrainingStatus::Failed).await;
    finish(&app, &bobs, TrainingStatus::Completed).await;

    let r = mail_creators(
        app.repo.as_ref(),
        &mailer,
        &public,
        day,
        50,
        app.clock.now(),
    )
    .await;
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(r.sent.len(), 2, "{r:?}");
    assert_eq!(r.skipped, vec![bobs.clone()], "Bob opted out");
    {
        let mails = mails.lock().unwrap();
        assert_eq!(mails.len(), 2);
        assert!(
            mails
                .iter()
                .all(|m| m.to == vec!["<jane@example.com>".to_owned()])
        );
        // Undo quoted-printable's soft line breaks.
        let all: String = mails
            .iter()
            .map(|m| m.data.replace("=\r\n", "").replace("=\n", ""))
            .collect();
        assert!(
            all.contains(&format!(
                "https://loras.example.com/api/v1/lora-models/{done}"
            )),
            "{all}"
        );
        assert!(all.contains("is ready") && all.contains("failed"), "{all}");
    }
    // Each LoRA is mailed once.
    let r = mail_creators(
        app.repo.as_ref(),
        &mailer,
        &public,
        day,
        50,
        app.clock.now(),
    )
    .await;
    assert!(r.sent.is_empty() && r.skipped.is_empty(), "{r:?}");
    assert_eq!(mails.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creators_are_mailed_once_unless_opted_out_sqlite() {
    creator_mail_story(Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creators_are_mailed_once_unless_opted_out_postgres() {
    creator_mail_story(Engine::Postgres).await;
}
