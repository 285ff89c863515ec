//! Mutation fuzzing of what devices send (issue 30): every first-party device-type plugin's
//! `enroll` and `decode`, through the real runtime, fed variations of its own recorded
//! payloads (`plugins/*/fixtures`): bits flipped, bytes set to the values parsers trip on,
//! ranges cut, repeated or spliced from another payload, numbers made huge, nesting made
//! deep. The property: a plugin answers every input with a result or a refusal
//! (`malformed`, `invalid`, …), never a fault (a trap, which is a panic in the guest, or a
//! CPU, memory or output limit). The host's own first look at a body (`bounds::check`)
//! and its topic parser see the same inputs and must not panic.
//!
//! CI runs a bounded number of inputs per plugin; `DROVER_FUZZ_SECS` runs each plugin for
//! that long instead (docs/testing.md has the long runs). A finding is written to
//! `target/fuzz-findings/` and fails the test with the file's name.

use drover::plugins::fixtures::{self, Input};
use drover::plugins::{CallError, LoadOptions, Source};
use drover_tests::{Rng, runtime};
use std::time::{Duration, Instant};

/// Inputs per plugin when no time is given.
const CI_INPUTS: usize = 300;

/// Bytes parsers of JSON, XML, plists, TLV and CoAP link format trip on.
const INTERESTING: &[u8] = b"\x00\xff\x7f\x80<>{}[]\"'\\&;:,=/.-+0123456789eE \n\t";

fn mutate(rng: &mut Rng, body: &[u8], others: &[Input]) -> Vec<u8> {
    let mut b = body.to_vec();
    // Mostly one or two changes: more, and nearly every input stops at the first parse
    // error, before the code behind the parser.
    for _ in 0..1 + rng.below(2) + rng.below(2) * rng.below(3) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                b.drain(start..end);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let copy = b[start..end].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, copy);
            }
            5 => b.truncate(rng.below(len + 1)),
            6 if !others.is_empty() => {
                // Splice: this payload's head, another payload's tail.
                let other = &others[rng.below(others.len())].body;
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            7 => {
                // A number where a number is: far too large, negative, or not finite.
                let at = b.iter().position(u8::is_ascii_digit).unwrap_or(len);
                let huge: &[u8] =
                    [&b"99999999999999999999999999"[..], b"-1", b"1e999", b"NaN", b"0x7fffffff"][rng.below(5)];
                b.splice(at..at, huge.iter().copied());
            }
            _ => {
                // Deep nesting of whatever bracket the payload uses.
                let open = [b'[', b'{', b'<'][rng.below(3)];
                let at = rng.below(len + 1);
                let depth = 1 + rng.below(300);
                b.splice(at..at, std::iter::repeat_n(open, depth));
            }
        }
    }
    b
}

fn finding(plugin: &str, input: &Input, body: &[u8], what: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-findings");
    std::fs::create_dir_all(&dir).unwrap();
    let hash =
        std::hash::BuildHasher::hash_one(&std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(), body);
    let name = format!("{plugin}-{}-{hash:016x}.bin", input.call);
    std::fs::write(dir.join(&name), body).unwrap();
    format!("{plugin} {} of a variation of {}: {what} (input in target/fuzz-findings/{name})", input.call, input.file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_payloads_never_fault_a_plugin() {
    let budget = std::env::var("DROVER_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut report = Vec::new();
    for (name, bytes) in drover::plugins::first_party::PLUGINS {
        let fixtures = root.join(name).join("fixtures");
        if !fixtures.join("cases.toml").exists() {
            continue; // a transport or a rule: no device payloads
        }
        let manifest = drover::plugins::Manifest::from_component(bytes).unwrap();
        let options = LoadOptions { grants: manifest.capabilities.iter().copied().collect(), ..Default::default() };
        let plugin = runtime().load(bytes, options).await.unwrap_or_else(|e| panic!("{name} loads: {e}"));
        // The device the recorded enrollment makes, as `drover plugin test` does: decodes
        // are as that device, so they get past the identity checks to the parsing.
        let mut device =
            drover::plugins::types::Device { id: "fixture-device".into(), metadata: vec![], session: vec![] };
        for input in fixtures::inputs(&fixtures, &device.id).unwrap().iter().filter(|i| i.call == "enroll") {
            if let Ok(e) = plugin.enroll(Source::Admin, input.channel.clone(), input.body.clone()).await {
                device.id = e.device_id;
                device.metadata = e.metadata;
            }
        }
        let inputs = fixtures::inputs(&fixtures, &device.id).unwrap();
        let mut rng = Rng(0x853C_49E6_748F_EA9B ^ name.len() as u64);
        let started = Instant::now();
        let (mut tried, mut refused) = (0usize, 0usize);
        loop {
            match budget {
                Some(b) if started.elapsed() >= b => break,
                None if tried >= CI_INPUTS => break,
                _ => {}
            }
            let input = &inputs[rng.below(inputs.len())];
            let body = mutate(&mut rng, &input.body, &inputs);
            let _ = drover::bounds::check(&body);
            if let Ok(text) = std::str::from_utf8(&body) {
                let _ = drover::mqtt::parse_topic(text);
            }
            // A fresh source per input: the runtime holds back a source whose input keeps
            // faulting, which would hide the next finding behind `held`.
            let source = Source::Peer(std::net::IpAddr::from([10, 0, (tried >> 8) as u8, tried as u8]));
            let answer = match input.call.as_str() {
                "enroll" => plugin.enroll(source, input.channel.clone(), body.clone()).await.map(|_| ()),
                _ => plugin.decode(source, device.clone(), input.channel.clone(), body.clone()).await.map(|_| ()),
            };
            match answer {
                Ok(()) => {}
                Err(CallError::Rejected(e)) => {
                    if std::env::var("DROVER_FUZZ_VERBOSE").is_ok() && refused < 5 {
                        eprintln!("{name} refused {}: {}", input.file, e.message);
                    }
                    refused += 1
                }
                Err(CallError::Fault(f)) => panic!("{}", finding(name, input, &body, &f.to_string())),
                Err(other) => panic!("{}", finding(name, input, &body, &other.to_string())),
            }
            tried += 1;
        }
        report.push(format!(
            "{name}: {tried} inputs from {} payloads in {:.1} s, {refused} refused, 0 faults",
            inputs.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    assert!(report.len() >= 5, "every first-party device type was fuzzed: {report:?}");
    for line in report {
        eprintln!("{line}");
    }
}
