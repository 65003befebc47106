//! The recorder and the history's JSON form.

use super::*;

#[test]
fn recorder_collects_ops_of_several_threads() {
    let recorder = Recorder::new();
    std::thread::scope(|s| {
        for client in 0..4u32 {
            let recorder = &recorder;
            s.spawn(move || {
                for i in 0..25 {
                    let value = format!("c{client}-{i}");
                    let id = recorder.invoke(client, "k", OpKind::Put { value });
                    recorder.written(id);
                    let id = recorder.invoke(client, "k", OpKind::Get);
                    recorder.read(id, Some("x".to_string()));
                }
                let id = recorder.invoke(client, "k", OpKind::Get);
                recorder.fail(id);
                let id = recorder.invoke(client, "k", OpKind::Get);
                recorder.unknown(id);
                recorder.invoke(client, "k", OpKind::Get);
            });
        }
    });
    let history = recorder.finish();
    assert_eq!(history.ops.len(), 4 * 53);
    for op in &history.ops {
        match op.outcome {
            Outcome::Pending => assert_eq!(op.complete, None),
            _ => assert!(op.complete.is_some_and(|c| c >= op.invoke), "{op}"),
        }
    }
    let pending = history.ops.iter().filter(|o| o.outcome == Outcome::Pending);
    assert_eq!(pending.count(), 4);
}

#[test]
#[should_panic(expected = "completed twice")]
fn completing_twice_is_a_bug() {
    let recorder = Recorder::new();
    let id = recorder.invoke(1, "k", OpKind::Get);
    recorder.read(id, None);
    recorder.fail(id);
}

#[test]
fn history_round_trips_through_json() {
    let recorder = Recorder::new();
    let a = recorder.invoke_at(1, "k", OpKind::Put { value: "a".into() }, 5);
    let b = recorder.invoke_at(2, "k", OpKind::Get, 6);
    let c = recorder.invoke_at(3, "j", OpKind::Get, 7);
    let d = recorder.invoke_at(3, "j", OpKind::Put { value: "d".into() }, 8);
    recorder.invoke_at(4, "j", OpKind::Get, 9);
    recorder.complete(a, Outcome::Written, 10);
    recorder.complete(b, Outcome::Read(Some("a".into())), 11);
    recorder.complete(c, Outcome::Read(None), 12);
    recorder.complete(d, Outcome::Unknown, 13);
    let history = recorder.snapshot();
    let text = history.to_json();
    assert!(text.contains("\"read\": \"a\""), "{text}");
    assert_eq!(History::from_json(&text).unwrap(), history);
    assert!(History::from_json("{\"ops\": [{\"client\": 1}]}").is_err());
}

#[test]
fn ops_display_for_people() {
    let put = Op::new(
        1,
        "k",
        OpKind::Put { value: "a".into() },
        5,
        10,
        Outcome::Written,
    );
    assert_eq!(put.to_string(), "c1 PUT \"k\"=\"a\" ok [5, 10]");
    let mut get = Op::new(2, "k", OpKind::Get, 6, 11, Outcome::Read(None));
    assert_eq!(get.to_string(), "c2 GET \"k\" -> absent [6, 11]");
    get.outcome = Outcome::Pending;
    get.complete = None;
    assert_eq!(get.to_string(), "c2 GET \"k\" pending [6, ?]");
}
