//! Rounds of requests: every connection sends its share, a fixed number in
//! flight, and every outcome is counted: acknowledged (with its latency),
//! refused (an error status), or lost (no answer at all).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rendezvous_core::{codec, proto};
use rendezvous_libp2p::framed::Framed;

use crate::Error;
use crate::conn::{Conn, MAX_RESPONSE, PROTOCOL, exchange};

/// How a connection carries its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carry {
    /// A substream each, as rust-libp2p's and py-libp2p's clients do.
    PerRequest,
    /// All on one long-lived substream, written ahead of their answers,
    /// which come in order: how our client carries them to a point of ours.
    OneSubstream,
}

impl Carry {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Carry::PerRequest => "substreams",
            Carry::OneSubstream => "one substream",
        }
    }
}

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

    /// Counts one request's outcome; an answer `check` rejects aborts.
    fn count(
        &mut self,
        latency: Duration,
        outcome: Result<proto::Message, Error>,
        check: &Check,
    ) -> Result<(), Error> {
        match outcome {
            Ok(reply) if status(&reply) == 0 => {
                check(&reply)?;
                self.latencies.push(latency);
            }
            Ok(reply) => {
                self.refused += 1;
                let code = status(&reply);
                let text = reply
                    .register_response
                    .and_then(|r| r.status_text)
                    .or(reply.discover_response.and_then(|d| d.status_text));
                self.note(format!("refused with status {code}: {}", text.unwrap_or_default()));
            }
            Err(error) => {
                self.lost += 1;
                self.note(format!("lost: {error}"));
            }
        }
        Ok(())
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
/// `inflight` at a time per connection, carried as `carry` says;
/// `request(connection, i)` builds each.
pub(crate) async fn round<R>(
    conns: &[Conn],
    operations: usize,
    inflight: usize,
    carry: Carry,
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
            let request = |i| request(j, i);
            match carry {
                Carry::PerRequest => {
                    let mut answers = futures::stream::iter(0..operations)
                        .map(|i| {
                            let (mut control, message) = (control.clone(), request(i));
                            async move {
                                let message = message?;
                                let t = Instant::now();
                                let answer = exchange(&mut control, peer, &message).await;
                                Ok::<_, Error>((t.elapsed(), answer))
                            }
                        })
                        .buffer_unordered(inflight);
                    while let Some(outcome) = answers.next().await {
                        let (latency, answer) = outcome?;
                        tally.count(latency, answer, check.as_ref())?;
                    }
                }
                Carry::OneSubstream => {
                    let stream = control.clone().open_stream(peer, PROTOCOL).await?;
                    let framed = Framed::new(stream, MAX_RESPONSE);
                    pipelined(framed, operations, inflight, request, &mut tally, check.as_ref())
                        .await?;
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

/// Writes `operations` requests on one substream, `inflight` ahead of their
/// answers, and counts the answers as they come, in order; if the substream
/// fails, every request it left unanswered is lost.
async fn pipelined(
    mut framed: Framed<libp2p::Stream>,
    operations: usize,
    inflight: usize,
    request: impl Fn(usize) -> Result<proto::Message, Error>,
    tally: &mut Tally,
    check: &Check,
) -> Result<(), Error> {
    let mut sent = VecDeque::with_capacity(inflight);
    let mut next = 0;
    let failure = loop {
        if next == operations && sent.is_empty() {
            return Ok(());
        }
        if next < operations && sent.len() < inflight {
            let message = request(next)?;
            if let Err(e) = framed.write_frame(&codec::frame(&message)).await {
                break e.to_string();
            }
            sent.push_back(Instant::now());
            next += 1;
            continue;
        }
        let answer = match framed.read_frame().await {
            Ok(Some(body)) => codec::decode_message(&body).map_err(Error::from),
            Ok(None) => break "the substream closed with requests unanswered".to_owned(),
            Err(e) => break e.to_string(),
        };
        let since = sent.pop_front().unwrap_or_else(Instant::now);
        tally.count(since.elapsed(), answer, check)?;
    };
    for _ in 0..operations - next + sent.len() {
        tally.count(Duration::ZERO, Err(failure.clone().into()), check)?;
    }
    Ok(())
}

/// Accepts any acknowledged answer.
pub(crate) fn any() -> Arc<Check> {
    Arc::new(|_| Ok(()))
}
