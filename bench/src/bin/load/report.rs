//! The tables, ratios and chart the runs print, and the soak's samples.

use rendezvous_core::proto;

use crate::phases::{InflightRun, ScaleRun, SharedRun};
use crate::rounds::Carry;
use crate::rounds::percentile_ms;
use crate::servers::Kind;
use crate::soak::{GRACE, SoakRun};

/// The registry-size sweep, one row per server and size.
pub(crate) fn scale_table(runs: &[ScaleRun]) {
    println!(
        "| server | N | registrations/s | register p50 / p99 ms | server CPU µs/registration | refreshes/s with N registered | refresh p99 ms | server CPU µs/refresh | discover pages/s | page p50 / p99 ms | page through all N s | mixed ops/s | mixed p99 ms | lost | server CPU s | load tool CPU s | peak RSS MiB |"
    );
    println!(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let page_all = match r.page_all_s {
            None => "n/a".to_owned(),
            Some((s, seen)) if seen == r.n => format!("{s:.2}"),
            Some((s, seen)) => format!("> {s:.0} ({seen} seen)"),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} / {:.2} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0} | {:.2} / {:.2} | {page_all} | {:.0} | {:.2} | {} | {:.2} | {:.2} | {:.1} |",
            r.kind.name(),
            r.n,
            r.register.per_second(),
            r.register.percentile_ms(0.5),
            r.register.percentile_ms(0.99),
            r.cpu_per_registration_us,
            r.refresh.per_second(),
            r.refresh.percentile_ms(0.99),
            r.cpu_per_refresh_us,
            r.pages.per_second(),
            r.pages.percentile_ms(0.5),
            r.pages.percentile_ms(0.99),
            r.mixed.per_second(),
            r.mixed.percentile_ms(0.99),
            r.lost(),
            r.cpu_s,
            r.own_cpu_s,
            r.peak_rss_mib
        );
    }
    println!();
    // Each of theirs against ours at the same N, or ours at its nearest N
    // (py-libp2p runs smaller).
    for theirs in runs.iter().filter(|r| r.kind != Kind::Ours) {
        let Some(ours) =
            runs.iter().filter(|r| r.kind == Kind::Ours).min_by_key(|r| r.n.abs_diff(theirs.n))
        else {
            continue;
        };
        println!(
            "ours (N={}) vs {} (N={}): registrations/s x{:.1}, server CPU per registration /{:.1}, per refresh with N registered /{:.1}, discover pages/s x{:.1}",
            ours.n,
            theirs.kind.name(),
            theirs.n,
            ours.register.per_second() / theirs.register.per_second().max(f64::MIN_POSITIVE),
            theirs.cpu_per_registration_us / ours.cpu_per_registration_us.max(f64::MIN_POSITIVE),
            theirs.cpu_per_refresh_us / ours.cpu_per_refresh_us.max(f64::MIN_POSITIVE),
            ours.pages.per_second() / theirs.pages.per_second().max(f64::MIN_POSITIVE),
        );
    }
    println!();
}

/// Requests in flight on one connection: what each server acknowledged,
/// refused and lost.
pub(crate) fn inflight_table(runs: &[InflightRun]) {
    println!(
        "| server | client | in flight | registrations | acknowledged | refused | lost | registrations/s | p50 / p99 ms | refreshes acknowledged / lost | server CPU µs/refresh, all registered |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let t = &r.register;
        let refresh = match &r.refresh {
            Some(f) => format!("{} / {}", f.acknowledged(), f.lost),
            None => "n/a".to_owned(),
        };
        let cpu = match r.refresh {
            Some(_) => format!("{:.1}", r.cpu_per_refresh_us),
            None => "n/a".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} / {:.2} | {refresh} | {cpu} |",
            r.kind.name(),
            r.client,
            r.inflight,
            t.acknowledged() + t.refused + t.lost,
            t.acknowledged(),
            t.refused,
            t.lost,
            t.per_second(),
            t.percentile_ms(0.5),
            t.percentile_ms(0.99),
        );
        if let Some(problem) = &t.first_problem {
            println!("|  | first problem: {problem} | | | | | | | | | |");
        }
    }
    println!();
    for durable in runs.iter().filter(|r| {
        matches!(r.kind, Kind::OursDurable | Kind::OursRedis | Kind::OursRedisReplica)
            && r.refresh.is_some()
    }) {
        let memory = runs.iter().find(|r| {
            r.kind == Kind::Ours && r.inflight == durable.inflight && r.client == durable.client
        });
        if let Some(memory) = memory {
            let (d, m) = (&durable.register, &memory.register);
            println!(
                "{} in flight, {}: {} {:.0} registrations/s (p50 {:.2} ms, p99 {:.2} ms), in memory {:.0}/s (p50 {:.2} ms, p99 {:.2} ms): {:.0}%",
                durable.inflight,
                durable.client,
                durable.kind.name(),
                d.per_second(),
                d.percentile_ms(0.5),
                d.percentile_ms(0.99),
                m.per_second(),
                m.percentile_ms(0.5),
                m.percentile_ms(0.99),
                100.0 * d.per_second() / m.per_second().max(f64::MIN_POSITIVE)
            );
        }
    }
    for scraped in runs.iter().filter(|r| r.kind == Kind::OursMetrics && r.refresh.is_some()) {
        let plain = runs.iter().find(|r| {
            r.kind == Kind::Ours && r.inflight == scraped.inflight && r.client == scraped.client
        });
        if let Some(plain) = plain {
            println!(
                "{} in flight, {}, all registered: server CPU per refresh with --metrics scraped every second {:.1} µs, without {:.1} µs ({:+.1}%)",
                scraped.inflight,
                scraped.client,
                scraped.cpu_per_refresh_us,
                plain.cpu_per_refresh_us,
                100.0
                    * (scraped.cpu_per_refresh_us
                        / plain.cpu_per_refresh_us.max(f64::MIN_POSITIVE)
                        - 1.0)
            );
        }
    }
    for theirs in runs.iter().filter(|r| r.kind.is_rust_libp2p() && r.refresh.is_some()) {
        let ours = runs.iter().find(|r| {
            r.kind == Kind::Ours && r.inflight == theirs.inflight && r.client == theirs.client
        });
        if let Some(ours) = ours {
            println!(
                "{} in flight, all registered: server CPU per refresh ours {:.1} µs vs {} {:.1} µs (/{:.1})",
                ours.inflight,
                ours.cpu_per_refresh_us,
                theirs.kind.name(),
                theirs.cpu_per_refresh_us,
                theirs.cpu_per_refresh_us / ours.cpu_per_refresh_us.max(f64::MIN_POSITIVE)
            );
        }
    }
    let one = Carry::OneSubstream.label();
    for pipelined in runs.iter().filter(|r| r.kind == Kind::Ours && r.client == one) {
        let each = runs.iter().find(|r| {
            r.kind == Kind::Ours
                && r.inflight == pipelined.inflight
                && r.client == Carry::PerRequest.label()
        });
        if let Some(each) = each {
            println!(
                "{} in flight, all registered: server CPU per refresh on one substream {:.1} µs, a substream each {:.1} µs (/{:.1})",
                pipelined.inflight,
                pipelined.cpu_per_refresh_us,
                each.cpu_per_refresh_us,
                each.cpu_per_refresh_us / pipelined.cpu_per_refresh_us.max(f64::MIN_POSITIVE)
            );
        }
    }
    println!();
}

/// Several points on one Redis.
pub(crate) fn shared_table(run: &SharedRun) {
    let rss: Vec<String> = run.rss_mib.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "| points on one redis | registrations | acknowledged / lost | registrations/s, all points | discover pages/s | page p99 ms | visibility lag p50 / p99 ms | RSS per point MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {} | {} | {} / {} | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {} |",
        run.points,
        run.register.acknowledged() + run.register.refused + run.register.lost,
        run.register.acknowledged(),
        run.register.lost,
        run.register.per_second(),
        run.pages.per_second(),
        run.pages.percentile_ms(0.99),
        percentile_ms(&run.lag, 0.5),
        percentile_ms(&run.lag, 0.99),
        rss.join(", ")
    );
    println!();
}

/// A small line chart of registrations/s against N, one line per server.
pub(crate) fn svg(runs: &[ScaleRun]) -> String {
    let (w, h, left, bottom) = (640.0, 360.0, 70.0, 40.0);
    let rate = |r: &ScaleRun| r.register.per_second();
    let max_rate = runs.iter().map(rate).fold(1.0, f64::max) * 1.1;
    let mut sizes: Vec<usize> = runs.iter().map(|r| r.n).collect();
    sizes.sort();
    sizes.dedup();
    let x = |n: usize| {
        let i = sizes.iter().position(|&s| s == n).unwrap_or(0) as f64;
        left + 20.0 + i * (w - left - 60.0) / (sizes.len().max(2) - 1) as f64
    };
    let y = |rate: f64| h - bottom - rate / max_rate * (h - bottom - 30.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="18" text-anchor="middle">registrations/s against registry size (higher is better)</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="20" x2="{left}" y2="{}" stroke="black"/>
"#,
        w / 2.0,
        h - bottom,
        w - 20.0,
        h - bottom,
        h - bottom
    );
    for n in &sizes {
        out += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">{n}</text>"#,
            x(*n),
            h - bottom + 16.0
        );
        out += "\n";
    }
    for i in 0..=4 {
        let tick = max_rate * i as f64 / 4.0;
        out += &format!(
            r#"<text x="{}" y="{}" text-anchor="end">{tick:.0}</text>"#,
            left - 6.0,
            y(tick) + 4.0,
        );
        out += "\n";
    }
    for (kind, color, row) in [
        (Kind::Ours, "#1b7f3b", 0),
        (Kind::OursDurable, "#2f9e44", 1),
        (Kind::OursRedis, "#c92a2a", 2),
        (Kind::OursMetrics, "#0b7285", 5),
        (Kind::OursWs, "#862e9c", 6),
        (Kind::OursRedisReplica, "#e8590c", 7),
        (Kind::Rust, "#b5651d", 3),
        (Kind::RustPoint, "#8d6e63", 8),
        (Kind::Py, "#3b5bdb", 4),
    ] {
        let points: Vec<(f64, f64)> =
            runs.iter().filter(|r| r.kind == kind).map(|r| (x(r.n), y(rate(r)))).collect();
        if points.is_empty() {
            continue;
        }
        let line: Vec<String> = points.iter().map(|(px, py)| format!("{px:.1},{py:.1}")).collect();
        out += &format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for (px, py) in &points {
            out += &format!(r#"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="{color}"/>"#);
        }
        out += &format!(
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            w - 170.0,
            40.0 + 16.0 * row as f64,
            kind.name()
        );
        out += "\n";
    }
    out + "</svg>\n"
}

/// The soak: a row per sample, then what was sent and what the walks found.
pub(crate) fn soak_table(run: &SoakRun) {
    let points = run.config.points.max(1);
    let mib = |r: &Option<f64>| r.map_or("exited".to_owned(), |r| format!("{r:.1}"));
    let per_point = |label: &str| (0..points).map(|p| format!("{label} {p}")).collect::<Vec<_>>();
    println!(
        "| t s | requests/s | Redis MiB | XLEN | HLEN | live (model) | {} | {} | lost | resurrected | over a limit |",
        per_point("RSS MiB, point").join(" | "),
        per_point("walked, point").join(" | ")
    );
    println!("|---:|---:|---:|---:|---:|---:|{}---:|---:|---:|", "---:|".repeat(2 * points));
    for s in &run.samples {
        let rss: Vec<String> = s.rss_mib.iter().map(mib).collect();
        let walked: Vec<String> =
            s.walked.iter().map(|w| w.map_or("failed".to_owned(), |n| n.to_string())).collect();
        println!(
            "| {:.0} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.at_s,
            s.per_s,
            s.redis_mib,
            s.xlen,
            s.hlen,
            s.live,
            rss.join(" | "),
            walked.join(" | "),
            s.lost,
            s.resurrected,
            s.over
        );
    }
    println!();
    let c = &run.counts;
    let refused: Vec<String> = c
        .refused
        .iter()
        .map(|(&status, n)| {
            let name = proto::ResponseStatus::try_from(status).map_or("unknown", |s| s.label());
            format!("{n} {name}")
        })
        .collect();
    println!(
        "requests: {} sent ({} stable REGISTERs, {} churn REGISTERs, {} UNREGISTERs, {} DISCOVERs); {} acknowledged, {} refused{}, {} lost; {} ticks skipped at the in-flight bound",
        c.sent(),
        c.stable_registers,
        c.churn_registers,
        c.unregisters,
        c.discovers,
        c.acknowledged,
        c.refused_total(),
        if refused.is_empty() { String::new() } else { format!(" ({})", refused.join(", ")) },
        c.lost,
        c.skipped
    );
    if let Some(problem) = &c.first_problem {
        println!("first refusal or loss: {problem}");
    }
    let k = &run.checks;
    println!(
        "checks over {} walks ({} failed): lost {}, resurrected {}, over a limit {} ({} in first pages, {} REGISTERs acknowledged beyond --max-per-peer {})",
        k.walks,
        k.walk_failures,
        k.lost,
        k.resurrected,
        k.over(),
        k.over_page,
        k.over_ack,
        run.max_per_peer
    );
    println!(
        "came right late, within {} s: {} registrations served late (at most {:.2} s after their acknowledgment), {} removals seen late (at most {:.2} s after their UNREGISTER); {} left undecided (a request sent, or the TTL running low, first)",
        GRACE.as_secs(),
        k.late_live,
        k.most_late_live.as_secs_f64(),
        k.late_gone,
        k.most_late_gone.as_secs_f64(),
        k.undecided
    );
    let walks = k.walks.max(1) as f64;
    println!(
        "each walk was held to {:.0} live keys and {:.0} unregistered ones on average; the most an identity was known to hold with a new REGISTER acknowledged: {} of {}",
        k.held_live as f64 / walks,
        k.held_gone as f64 / walks,
        k.most_held,
        run.max_per_peer
    );
    let ttl = run.config.ttl as f64;
    let after_ttl = run.samples.iter().find(|s| s.at_s >= ttl);
    if let (Some(first), Some(last)) = (after_ttl, run.samples.last()) {
        println!(
            "Redis used_memory after the first TTL window (t = {:.0} s) {:.1} MiB, last sample (t = {:.0} s) {:.1} MiB ({:+.1}%); XLEN {} then {}, HLEN {} then {}",
            first.at_s,
            first.redis_mib,
            last.at_s,
            last.redis_mib,
            100.0 * (last.redis_mib / first.redis_mib.max(f64::MIN_POSITIVE) - 1.0),
            first.xlen,
            last.xlen,
            first.hlen,
            last.hlen
        );
    }
    if let (Some(first), Some(last)) = (run.samples.first(), run.samples.last()) {
        let rss: Vec<String> = first
            .rss_mib
            .iter()
            .zip(&last.rss_mib)
            .map(|(a, b)| format!("{} -> {}", mib(a), mib(b)))
            .collect();
        println!(
            "RSS per point MiB, first sample (t = {:.0} s) -> last (t = {:.0} s): {}",
            first.at_s,
            last.at_s,
            rss.join(", ")
        );
    }
    for line in &k.evidence {
        println!("  {line}");
    }
    for e in &run.exits {
        println!(
            "point {} exited ({}), seen at t = {:.0} s; its last lines:",
            e.point, e.status, e.at_s
        );
        for line in &e.tail {
            println!("    {line}");
        }
    }
    println!();
}
