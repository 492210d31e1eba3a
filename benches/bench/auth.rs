//! What wrong keys cost everyone else: a legitimate client's `GET /agents`
//! while another address sends 10,000 wrong keys.

use crate::stats::{RUNS, Row, median, ms, percentile, sorted};
use crate::util::{Daemon, Home, KEY};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const WRONG: usize = 10_000;

/// Timings of `GET /agents` (ms) until `until` turns true, or `n` requests.
async fn timings(d: &Daemon, n: usize, until: impl Fn() -> bool) -> Vec<f64> {
    let mut t = Vec::new();
    while t.len() < n && !until() {
        let start = Instant::now();
        let res = d
            .client
            .get(format!("{}/agents", d.url))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        t.push(ms(start.elapsed()));
    }
    t
}

pub async fn wrong_keys() -> Vec<Row> {
    let mut home = Home::new();
    home.log_level = "warn";
    let agents: String = (0..10)
        .map(|i| format!("[agents.a{i}]\ncommand = [\"sleep\", \"100000\"]\n"))
        .collect();
    home.write_config(&format!("[defaults]\nstart_window = \"0s\"\n{agents}"));
    let d = home.start();
    for _ in 0..20 {
        timings(&d, 1, || false).await;
    }
    let (mut quiet, mut loaded, mut took, mut throttled) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let q = sorted(timings(&d, 500, || false).await);
        quiet.push(percentile(&q, 99.0));
        // The guessing address: 127.0.0.2, 32 requests at a time.
        let attacker = d
            .new_client(false)
            .local_address(IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let url = d.url.clone();
        let started = Instant::now();
        let attack = tokio::spawn(async move {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::with_capacity(WRONG);
            for i in 0..WRONG {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let (client, url) = (attacker.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let r = client
                        .get(format!("{url}/agents"))
                        .bearer_auth(format!("guess-{i:032}"))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await
                        .unwrap();
                    let code = r.status().as_u16();
                    r.bytes().await.unwrap();
                    code
                }));
            }
            let mut n429 = 0;
            for t in tasks {
                let code = t.await.unwrap();
                assert!(code == 401 || code == 429, "a wrong key answered {code}");
                n429 += usize::from(code == 429);
            }
            n429
        });
        let l = sorted(timings(&d, usize::MAX, || attack.is_finished()).await);
        throttled.push(attack.await.unwrap() as f64);
        took.push(started.elapsed().as_secs_f64());
        loaded.push(percentile(&l, 99.0));
        // Let the address's budget come back before the next round.
        tokio::time::sleep(Duration::from_secs(21)).await;
    }
    let (quiet, loaded) = (median(quiet), median(loaded));
    let (took, throttled) = (median(took), median(throttled));
    vec![Row::new(
        "wrong_keys_p99",
        loaded,
        "GET /agents p99 from 127.0.0.1 while 127.0.0.2 sends 10,000 wrong keys",
        format!(
            "p99 {loaded:.2} ms under attack vs {quiet:.2} ms quiet ({:.1}x); the 10,000 took {took:.1} s, {throttled:.0} answered 429",
            loaded / quiet
        ),
        "p99 < 10 ms (the GET /agents target)",
        Some(loaded < 10.0),
    )]
}
