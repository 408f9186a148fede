use super::*;

fn pid(s: &str) -> ProviderId {
    ProviderId::new(s)
}
fn mid(s: &str) -> MessageId {
    MessageId::new(s)
}
fn sent(seq: u64, at: u64) -> Outcome {
    Outcome::Sent { seq, accepted_at_ms: at }
}

fn per_sender() -> SendAnswers {
    SendAnswers::for_version(SENDER_WINDOWS_VERSION)
}

fn limits(max: u64, window_ms: u64) -> Limits {
    Limits { max_dedup_entries: max, dedup_window_ms: window_ms, ..Limits::default() }
}

#[test]
fn an_answer_is_small() {
    // What one remembered answer costs in a per-sender window, before the
    // hash map's slack: key, answer and place in the order.
    let per_answer = std::mem::size_of::<(Digest, Answer)>() + std::mem::size_of::<(u64, Digest)>();
    assert!(per_answer <= 72, "{per_answer} bytes");
}

#[test]
fn both_layouts_answer_alike_and_keep_the_first_answer() {
    for mut answers in [SendAnswers::default(), per_sender()] {
        answers.insert(5, &pid("a"), &mid("m"), sent(1, 5));
        answers.insert(6, &pid("a"), &mid("m"), sent(2, 6));
        answers.insert(6, &pid("b"), &mid("m"), Outcome::Done);
        answers.insert(7, &pid("a"), &mid("g"), Outcome::GroupSent { group_seq: 3, epoch: 2, accepted_at_ms: 7 });
        assert_eq!(answers.get(&pid("a"), &mid("m")), Some(sent(1, 5)));
        assert_eq!(answers.get(&pid("b"), &mid("m")), Some(Outcome::Done));
        assert_eq!(
            answers.get(&pid("a"), &mid("g")),
            Some(Outcome::GroupSent { group_seq: 3, epoch: 2, accepted_at_ms: 7 })
        );
        assert!(answers.contains(&pid("b"), &mid("m")));
        assert!(!answers.contains(&pid("c"), &mid("m")));
        assert_eq!(answers.len(), 3);
    }
}

#[test]
fn the_window_forgets_by_age_inclusive_then_by_count_per_sender() {
    let mut answers = per_sender();
    answers.insert(0, &pid("a"), &mid("old"), sent(1, 0));
    for i in 0..5 {
        answers.insert(10, &pid("a"), &mid(&format!("a{i}")), sent(2 + i, 10));
    }
    answers.insert(10, &pid("b"), &mid("b0"), sent(9, 10));
    answers.prune(100, &limits(10, 100));
    assert!(answers.contains(&pid("a"), &mid("old")), "exactly the window's age is kept");
    answers.prune(101, &limits(3, 100));
    assert!(!answers.contains(&pid("a"), &mid("old")));
    assert!(!answers.contains(&pid("a"), &mid("a1")));
    assert!(answers.contains(&pid("a"), &mid("a2")));
    assert!(answers.contains(&pid("b"), &mid("b0")), "another sender's answer stays");
    assert_eq!(answers.sender_windows().unwrap().sender_len(&pid("a")), 3);
    answers.prune(1_000, &limits(3, 100));
    assert!(answers.is_empty());
    assert_eq!(answers.sender_windows().unwrap().windows.len(), 0, "empty windows go");
}

#[test]
fn split_keeps_every_answer_in_its_order() {
    let mut answers = SendAnswers::default();
    for (i, sender) in ["a", "b", "a", "c", "a"].iter().enumerate() {
        answers.insert(i as u64, &pid(sender), &mid(&format!("m{i}")), sent(i as u64, i as u64));
    }
    let shared = answers.clone();
    answers.split_per_sender();
    assert!(answers.sender_windows().is_some());
    assert_eq!(answers.len(), 5);
    for (i, sender) in ["a", "b", "a", "c", "a"].iter().enumerate() {
        let id = mid(&format!("m{i}"));
        assert_eq!(answers.get(&pid(sender), &id), shared.get(&pid(sender), &id));
    }
    // Oldest first within a sender: a cap of one keeps a's newest.
    answers.prune(5, &limits(1, 100));
    assert!(answers.contains(&pid("a"), &mid("m4")));
    assert!(!answers.contains(&pid("a"), &mid("m2")));
    assert_eq!(answers.len(), 3);
    let again = answers.clone();
    answers.split_per_sender();
    assert_eq!(answers, again, "splitting twice changes nothing");
}

#[test]
fn per_sender_windows_encode_identically_on_every_replica() {
    let mut one = per_sender();
    let mut two = per_sender();
    for i in 0..200u64 {
        let (sender, id) = (pid(["a", "b"][(i % 2) as usize]), mid(&format!("m{i}")));
        one.insert(i, &sender, &id, sent(i, i));
        two.insert(i, &sender, &id, sent(i, i));
    }
    let bytes = bincode::serialize(one.sender_windows().unwrap()).unwrap();
    assert_eq!(bytes, bincode::serialize(two.sender_windows().unwrap()).unwrap());
    let back: SenderWindows = bincode::deserialize(&bytes).unwrap();
    assert_eq!(&back, one.sender_windows().unwrap());
    assert_eq!(format!("{back:?}"), format!("{:?}", one.sender_windows().unwrap()));
    // The state's own encoding carries none of it (the section does).
    assert_eq!(bincode::serialize(&one).unwrap(), bincode::serialize(&SendAnswers::default()).unwrap());
}

/// Damaged input: a digest repeated within a sender keeps its first place.
#[test]
fn per_sender_windows_decode_damaged_input_consistently() {
    let d = Digest::of(&mid("x"));
    let listed =
        BTreeMap::from([(pid("a"), vec![(5u64, d, Answer::Done), (6, d, Answer::Sent { seq: 1, accepted_at_ms: 6 })])]);
    let bytes = bincode::serialize(&listed).unwrap();
    let windows: SenderWindows = bincode::deserialize(&bytes).unwrap();
    assert_eq!(windows.sender_len(&pid("a")), 1);
    let mut answers = per_sender();
    answers.set_sender_windows(windows);
    assert_eq!(answers.get(&pid("a"), &mid("x")), Some(Outcome::Done));
}

#[test]
fn a_backup_round_trip_keeps_answers_of_either_layout() {
    for mut answers in [SendAnswers::default(), per_sender()] {
        answers.insert(1, &pid("a"), &mid("1"), sent(1, 1));
        answers.insert(2, &pid("b"), &mid("2"), Outcome::Done);
        let mut back = SendAnswers::for_version(if answers.sender_windows().is_some() { 5 } else { 1 });
        for remembered in answers.clone().into_answers() {
            back.insert_remembered(remembered);
        }
        assert_eq!(back, answers);
    }
    // Digests cannot go into a shared window; ids can go into per-sender ones.
    let mut digests = per_sender();
    digests.insert(1, &pid("a"), &mid("1"), sent(1, 1));
    let mut shared = SendAnswers::default();
    for remembered in digests.into_answers() {
        shared.insert_remembered(remembered);
    }
    assert!(shared.is_empty());
}

/// Damaged input (found by the log_entry fuzzer): an order entry repeated,
/// one without an answer, an answer without an order entry. Decoding makes a
/// consistent window; its encoding decodes to the same window, and two
/// decodes of the same bytes encode identically.
#[test]
fn the_shared_window_decodes_damaged_input_into_a_consistent_table() {
    #[derive(serde::Serialize)]
    struct Fields {
        answers: BTreeMap<(ProviderId, MessageId), Outcome>,
        order: VecDeque<(u64, ProviderId, MessageId)>,
    }
    let damaged = Fields {
        answers: BTreeMap::from([
            ((pid("a"), mid("1")), sent(1, 5)),
            ((pid("a"), mid("2")), sent(2, 5)),
            ((pid("a"), mid("3")), sent(3, 5)),
        ]),
        order: VecDeque::from([
            (5, pid("a"), mid("2")),
            (6, pid("a"), mid("9")),
            (7, pid("a"), mid("2")),
            (8, pid("a"), mid("3")),
        ]),
    };
    let bytes = bincode::serialize(&damaged).unwrap();
    let window: SharedWindow = bincode::deserialize(&bytes).unwrap();
    let order: Vec<_> = window.order.iter().map(|(t, _, m)| (*t, m.as_str().to_string())).collect();
    assert_eq!(order, vec![(0, "1".into()), (5, "2".into()), (8, "3".into())]);
    assert_eq!(window.answers.len(), 3);
    let encoded = bincode::serialize(&window).unwrap();
    let again: SharedWindow = bincode::deserialize(&encoded).unwrap();
    assert_eq!(again, window);
    let other: SharedWindow = bincode::deserialize(&bytes).unwrap();
    assert_eq!(bincode::serialize(&other).unwrap(), encoded, "same bytes on every replica");
}

#[test]
fn a_window_gives_memory_back_after_a_burst() {
    for mut answers in [SendAnswers::default(), per_sender()] {
        for i in 0..20_000u64 {
            answers.insert(10, &pid("a"), &mid(&format!("b{i}")), sent(i, 10));
        }
        let capacity = |a: &SendAnswers| match &a.0 {
            Layout::Shared(w) => (w.answers.capacity(), w.order.capacity()),
            Layout::PerSender(w) => {
                w.windows.get(&pid("a")).map_or((0, 0), |s| (s.answers.capacity(), s.order.capacity()))
            }
        };
        let (peak, _) = capacity(&answers);
        assert!(peak >= 20_000, "{peak}");
        answers.insert(2_000, &pid("a"), &mid("after"), sent(0, 2_000));
        answers.prune(2_000, &limits(10_000_000, 1_000));
        assert_eq!(answers.len(), 1);
        let (map, order) = capacity(&answers);
        assert!(map < peak / 4 && order < peak / 4, "capacity {map}/{order} after peak {peak}");
        assert!(answers.contains(&pid("a"), &mid("after")));
    }
}
