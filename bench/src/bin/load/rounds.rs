//! Rounds of requests: every connection sends its share, a fixed number in
//! flight, and every outcome is counted: acknowledged (with its latency),
//! refused (an error status), or lost (no answer at all).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rendezvous_core::proto;

use crate::Error;
use crate::conn::{Conn, exchange};

/// What a round's requests came to.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Latencies of the acknowledged requests, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Answered with an error status.
    pub(crate) refused: usize,
    /// Never answered: the substream failed or closed first.
    pub(crate) lost: usize,
    /// The first refusal or loss, to say what went wrong.
    pub(crate) first_problem: Option<String>,
    /// How long the round took.
    pub(crate) elapsed: Duration,
}

impl Tally {
    pub(crate) fn acknowledged(&self) -> usize {
        self.latencies.len()
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.acknowledged() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The `p`-quantile latency in milliseconds.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }

    fn note(&mut self, problem: String) {
        self.first_problem.get_or_insert(problem);
    }

    fn absorb(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.refused += other.refused;
        self.lost += other.lost;
        if let Some(problem) = other.first_problem {
            self.note(problem);
        }
    }
}

/// The `p`-quantile of sorted latencies, in milliseconds.
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// The status of a response, whatever its type.
pub(crate) fn status(reply: &proto::Message) -> i32 {
    reply.response_status().unwrap_or(0)
}

/// Judges an acknowledged answer's content; an `Err` aborts the run, since
/// the numbers would mean nothing.
pub(crate) type Check = dyn Fn(&proto::Message) -> Result<(), String> + Send + Sync;

/// Sends `operations` requests on every connection to its point,
/// `inflight` at a time per connection, one substream each;
/// `request(connection, i)` builds each.
pub(crate) async fn round<R>(
    conns: &[Conn],
    operations: usize,
    inflight: usize,
    request: R,
    check: Arc<Check>,
) -> Result<Tally, Error>
where
    R: Fn(usize, usize) -> Result<proto::Message, Error> + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (j, conn) in conns.iter().enumerate() {
        let (control, peer, request, check) =
            (conn.control.clone(), conn.server, request.clone(), check.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally { latencies: Vec::with_capacity(operations), ..Tally::default() };
            let mut answers = futures::stream::iter(0..operations)
                .map(|i| {
                    let (mut control, message) = (control.clone(), request(j, i));
                    async move {
                        let message = message?;
                        let t = Instant::now();
                        let answer = exchange(&mut control, peer, &message).await;
                        Ok::<_, Error>((t.elapsed(), answer))
                    }
                })
                .buffer_unordered(inflight);
            while let Some(outcome) = answers.next().await {
                match outcome? {
                    (latency, Ok(reply)) if status(&reply) == 0 => {
                        check(&reply)?;
                        tally.latencies.push(latency);
                    }
                    (_, Ok(reply)) => {
                        tally.refused += 1;
                        let code = status(&reply);
                        let text = reply
                            .register_response
                            .and_then(|r| r.status_text)
                            .or(reply.discover_response.and_then(|d| d.status_text));
                        tally.note(format!(
                            "refused with status {code}: {}",
                            text.unwrap_or_default()
                        ));
                    }
                    (_, Err(error)) => {
                        tally.lost += 1;
                        tally.note(format!("lost: {error}"));
                    }
                }
            }
            Ok::<_, Error>(tally)
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.absorb(task.await??);
    }
    total.latencies.sort();
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Accepts any acknowledged answer.
pub(crate) fn any() -> Arc<Check> {
    Arc::new(|_| Ok(()))
}
