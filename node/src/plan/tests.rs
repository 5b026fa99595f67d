//! The rule, case by case: each case lists what the servers said and what the plan must
//! conclude.

use super::*;

/// A status report; every log here is one history, so a position's hash is `h{id}` unless a
/// case gives another.
fn report(role: &str, epoch: u64, committed: u64, durable: u64, hash: &str) -> StatusReport {
    StatusReport {
        database: "app".into(),
        role: role.into(),
        epoch,
        epoch_primary: None,
        last_rollback: None,
        failover: None,
        last_epoch: epoch,
        committed: Position {
            tx_id: committed,
            hash: format!("h{committed}"),
        },
        precommitted: Position {
            tx_id: durable,
            hash: hash.to_string(),
        },
        waiting_writes: 0,
        fenced: None,
        upstream: None,
        last_error: None,
        replicas: Vec::new(),
        members: Vec::new(),
        policy: None,
        ..StatusReport::default()
    }
}

fn primary(node: &str, durable: u64, policy: &str, members: &[&str]) -> Listed {
    let mut report = report("primary", 1, durable, durable, &format!("h{durable}"));
    report.policy = Some(policy.into());
    report.members = members.iter().map(|m| format!("{m}/app")).collect();
    Listed {
        server: format!("a-{node}"),
        heard: Heard::Status {
            node: node.into(),
            report: Box::new(report),
        },
    }
}

fn replica(node: &str, committed: u64, durable: u64) -> Listed {
    replica_at(node, 1, committed, durable, &format!("h{durable}"))
}

fn replica_at(node: &str, epoch: u64, committed: u64, durable: u64, hash: &str) -> Listed {
    Listed {
        server: format!("a-{node}"),
        heard: Heard::Status {
            node: node.into(),
            report: Box::new(report("replica", epoch, committed, durable, hash)),
        },
    }
}

fn down(node: &str) -> Listed {
    Listed {
        server: format!("a-{node}"),
        heard: Heard::Unreachable("connection refused".into()),
    }
}

fn without_db(node: &str) -> Listed {
    Listed {
        server: format!("a-{node}"),
        heard: Heard::NoStatus("unknown database app".into()),
    }
}

struct Case {
    name: &'static str,
    listed: Vec<Listed>,
    quorum: Option<&'static str>,
    /// The safe candidates, by node.
    safe: &'static [&'static str],
    recommended: Option<&'static str>,
    more_needed: Option<usize>,
    /// `(k, n, needed)` per part.
    rule: &'static [(usize, usize, usize)],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "acks 1, primary down, both replicas answer: the one ahead is safe",
            listed: vec![down("n1"), replica("n2", 5, 7), replica("n3", 3, 5)],
            quorum: Some("acks 1"),
            safe: &["n2"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "acks 1, primary and a replica down: too few answered",
            listed: vec![down("n1"), replica("n2", 5, 7), down("n3")],
            quorum: Some("acks 1"),
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "a server without the database is not an answer",
            listed: vec![down("n1"), replica("n2", 5, 7), without_db("n3")],
            quorum: Some("acks 1"),
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "any 1 of two names, only one listed: one more must answer",
            listed: vec![down("n1"), replica("n2", 5, 7)],
            quorum: Some("any 1 (n2,n3)"),
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "any 1 of two names, both answer",
            listed: vec![down("n1"), replica("n2", 5, 7), replica("n3", 5, 6)],
            quorum: Some("any 1 (n2,n3)"),
            safe: &["n2"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "any 2 of three names: two answers suffice",
            listed: vec![
                down("n1"),
                replica("n3", 5, 6),
                down("n4"),
                replica("n2", 5, 9),
            ],
            quorum: Some("any 2 (n2,n3,n4)"),
            safe: &["n2"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(2, 3, 2)],
        },
        Case {
            name: "first 1 is taken as any 1",
            listed: vec![down("n1"), replica("n3", 5, 6)],
            quorum: Some("first 1 (n2,n3)"),
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "majority (names): k = 2 of 3, two answers suffice",
            listed: vec![replica("n2", 4, 4), replica("n4", 4, 5)],
            quorum: Some("majority (n2,n3,n4)"),
            safe: &["n4"],
            recommended: Some("n4"),
            more_needed: None,
            rule: &[(2, 3, 2)],
        },
        Case {
            name: "majority: k = 1, since the membership may have been smaller: all must answer",
            listed: vec![
                primary("n1", 9, "majority", &["n2", "n3", "n4"]),
                replica("n2", 8, 8),
                replica("n3", 8, 9),
                down("n4"),
            ],
            quorum: None,
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 3, 3)],
        },
        Case {
            name: "majority: every member answered",
            listed: vec![
                primary("n1", 9, "majority", &["n2", "n3", "n4"]),
                replica("n2", 8, 8),
                replica("n3", 8, 9),
                replica("n4", 7, 7),
            ],
            quorum: None,
            safe: &["n3"],
            recommended: Some("n3"),
            more_needed: None,
            rule: &[(1, 3, 3)],
        },
        Case {
            name: "the primary's policy wins over --quorum",
            listed: vec![
                primary("n1", 9, "acks 2", &["n2", "n3", "n4"]),
                replica("n2", 8, 9),
                replica("n3", 8, 8),
            ],
            quorum: Some("acks 1"),
            safe: &["n2"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(2, 3, 2)],
        },
        Case {
            name: "a replica of a replica is a candidate but no voter",
            listed: vec![
                primary("n1", 9, "acks 1", &["n2", "n3"]),
                replica("n2", 8, 8),
                down("n3"),
                replica("n4", 7, 7),
            ],
            quorum: None,
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "async: nothing is safe, the most advanced is recommended",
            listed: vec![down("n1"), replica("n2", 5, 6), replica("n3", 5, 8)],
            quorum: Some("async"),
            safe: &[],
            recommended: Some("n3"),
            more_needed: None,
            rule: &[(0, 2, 2)],
        },
        Case {
            name: "acks 0 is asynchronous",
            listed: vec![primary("n1", 9, "acks 0", &["n2"]), replica("n2", 5, 6)],
            quorum: None,
            safe: &[],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(0, 1, 1)],
        },
        Case {
            name: "a tie at the highest position: both safe, the first given recommended",
            listed: vec![down("n1"), replica("n3", 5, 7), replica("n2", 5, 7)],
            quorum: Some("acks 1"),
            safe: &["n3", "n2"],
            recommended: Some("n3"),
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "a tie broken by the commit point",
            listed: vec![down("n1"), replica("n3", 4, 7), replica("n2", 6, 7)],
            quorum: Some("acks 1"),
            safe: &["n2", "n3"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "the same id with different hashes: diverged, nothing safe",
            listed: vec![
                down("n1"),
                replica_at("n2", 1, 5, 7, "h7"),
                replica_at("n3", 1, 5, 7, "x7"),
            ],
            quorum: Some("acks 1"),
            safe: &[],
            recommended: None,
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "a log ending in a later epoch ranks above a longer one of an older epoch",
            listed: vec![
                down("n1"),
                replica_at("n2", 1, 5, 9, "h9"),
                replica_at("n3", 2, 5, 6, "h6"),
            ],
            quorum: Some("acks 1"),
            safe: &["n3"],
            recommended: Some("n3"),
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "no primary and no --quorum: the policy is unknown",
            listed: vec![down("n1"), replica("n2", 5, 7), replica("n3", 5, 7)],
            quorum: None,
            safe: &[],
            recommended: None,
            more_needed: None,
            rule: &[],
        },
        Case {
            name: "and: one part that holds is enough",
            listed: vec![
                primary("n1", 9, "acks 2 and any 1 (n2)", &["n2", "n3", "n4"]),
                replica("n2", 8, 9),
            ],
            quorum: None,
            safe: &["n2"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(2, 3, 2), (1, 1, 1)],
        },
        Case {
            name: "and: no part holds",
            listed: vec![
                primary("n1", 9, "acks 2 and any 1 (n2)", &["n2", "n3", "n4"]),
                replica("n3", 8, 9),
            ],
            quorum: None,
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(2, 3, 2), (1, 1, 1)],
        },
        Case {
            name: "more acknowledgements than members: every member must answer",
            listed: vec![
                primary("n1", 9, "acks 3", &["n2", "n3"]),
                replica("n2", 8, 9),
            ],
            quorum: None,
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(3, 2, 2)],
        },
        Case {
            name: "every listed server answered as a replica: the primary was not listed",
            listed: vec![replica("n2", 5, 7), replica("n3", 5, 6)],
            quorum: Some("majority"),
            safe: &["n2"],
            recommended: Some("n2"),
            more_needed: None,
            rule: &[(1, 2, 2)],
        },
        Case {
            name: "nothing answered",
            listed: vec![down("n1"), down("n2")],
            quorum: Some("acks 1"),
            safe: &[],
            recommended: None,
            more_needed: Some(1),
            rule: &[(1, 1, 1)],
        },
    ]
}

#[test]
fn the_rule_case_by_case() {
    for case in cases() {
        let quorum = case.quorum.map(|q| q.parse::<Quorum>().expect("policy"));
        let plan = plan("app", &case.listed, quorum.as_ref());
        let safe: Vec<&str> = plan
            .candidates
            .iter()
            .filter(|c| c.safe)
            .map(|c| c.node.as_str())
            .collect();
        assert_eq!(safe, case.safe, "{}: safe candidates; {plan:#?}", case.name);
        assert_eq!(
            plan.recommended,
            case.recommended.map(|n| format!("a-{n}")),
            "{}: recommendation; {plan:#?}",
            case.name
        );
        assert_eq!(plan.is_safe(), !case.safe.is_empty(), "{}", case.name);
        assert_eq!(
            plan.more_needed, case.more_needed,
            "{}: more needed; {plan:#?}",
            case.name
        );
        let rule: Vec<(usize, usize, usize)> =
            plan.rule.iter().map(|r| (r.k, r.n, r.needed)).collect();
        assert_eq!(rule, case.rule, "{}: k, n, needed", case.name);
        assert_eq!(plan.members.len(), case.listed.len(), "{}", case.name);
    }
}

#[test]
fn missing_txs_count_from_the_most_advanced_answer() {
    let listed = vec![down("n1"), replica("n2", 5, 7), replica("n3", 3, 4)];
    let plan = plan("app", &listed, Some(&"acks 1".parse().expect("policy")));
    let missing: Vec<(&str, u64, bool)> = plan
        .candidates
        .iter()
        .map(|c| (c.node.as_str(), c.missing_txs, c.safe))
        .collect();
    assert_eq!(missing, [("n2", 0, true), ("n3", 3, false)]);
    assert_eq!(
        plan.candidates[1].why.as_deref(),
        Some("behind the most advanced durable position by 3 txs")
    );
    assert_eq!(plan.not_heard_from, ["a-n1"]);
    assert!(!plan.members[0].reachable);
    assert_eq!(plan.members[0].error.as_deref(), Some("connection refused"));
    assert_eq!(plan.rule[0].basis, Basis::Assumed);
    assert_eq!(plan.assumptions.len(), 1, "{:?}", plan.assumptions);
    assert_eq!(plan.policy_from.as_deref(), Some("--quorum"));
}

#[test]
fn with_the_primary_up_its_policy_and_membership_are_used() {
    let listed = vec![
        primary("n1", 10, "any 1 (n2,n3)", &["n2", "n3"]),
        replica("n2", 8, 8),
        replica("n3", 8, 10),
    ];
    let plan = plan("app", &listed, Some(&"async".parse().expect("policy")));
    assert_eq!(plan.policy.as_deref(), Some("any 1 (n2,n3)"));
    assert_eq!(plan.policy_from.as_deref(), Some("primary a-n1"));
    assert_eq!(
        plan.membership,
        Some(vec!["n2/app".to_string(), "n3/app".to_string()])
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("--quorum async ignored")),
        "{:?}",
        plan.notes
    );
    // The primary is no candidate; the loss counts from its durable position too.
    let nodes: Vec<(&str, u64)> = plan
        .candidates
        .iter()
        .map(|c| (c.node.as_str(), c.missing_txs))
        .collect();
    assert_eq!(nodes, [("n3", 0), ("n2", 2)]);
    assert_eq!(plan.members[0].role.as_deref(), Some("primary"));
}

#[test]
fn membership_voters_are_matched_by_node_and_database() {
    let listed = vec![
        primary("n1", 9, "acks 1", &["n2", "n3"]),
        replica("n2", 8, 9),
        replica("n3", 8, 8),
    ];
    let result = plan("app", &listed, None);
    assert_eq!(result.rule[0].basis, Basis::Membership);
    assert_eq!(result.rule[0].answered, 2);
    assert!(result.rule[0].not_heard_from.is_empty());
    assert!(result.rule[0].holds);

    // A member under another database name is not this answer.
    let mut listed = listed;
    if let Heard::Status { report, .. } = &mut listed[0].heard {
        report.members = vec!["n2/app".into(), "n3/other".into()];
    }
    let result = plan("app", &listed, None);
    assert_eq!(result.rule[0].answered, 1);
    assert_eq!(result.rule[0].not_heard_from, ["n3/other"]);
    assert!(!result.is_safe());
}

#[test]
fn the_json_has_the_documented_fields() {
    let listed = vec![down("n1"), replica("n2", 5, 7), replica("n3", 3, 5)];
    let plan = plan("app", &listed, Some(&"acks 1".parse().expect("policy")));
    let value = serde_json::to_value(&plan).expect("json");
    assert_eq!(value["db"], "app");
    assert_eq!(value["recommended"], "a-n2");
    assert_eq!(value["members"][0]["reachable"], false);
    assert_eq!(value["members"][1]["precommitted"]["tx_id"], 7);
    assert_eq!(value["members"][1]["committed"]["hash"], "h5");
    assert_eq!(value["members"][1]["role"], "replica");
    assert_eq!(value["members"][1]["epoch"], 1);
    assert_eq!(value["candidates"][1]["missing_txs"], 2);
    assert_eq!(value["candidates"][0]["safe"], true);
    assert_eq!(value["rule"][0]["basis"], "assumed");
    assert_eq!(value["not_heard_from"][0], "a-n1");
}

#[test]
fn the_verdict_says_who_must_answer_or_why_nothing_is_safe() {
    let verdict = |listed: Vec<Listed>, quorum: Option<&str>| {
        let quorum = quorum.map(|q| q.parse::<Quorum>().expect("policy"));
        plan("app", &listed, quorum.as_ref()).verdict
    };
    assert_eq!(
        verdict(vec![down("n1"), replica("n2", 5, 7)], Some("any 1 (n2,n3)")),
        "no candidate is provably safe: 1 more of n3 must answer"
    );
    let assumed = verdict(
        vec![down("n1"), replica("n2", 5, 7), replica("n3", 5, 6)],
        Some("acks 1"),
    );
    assert!(
        assumed.starts_with("a-n2 holds every acknowledged write")
            && assumed.ends_with(", if the listed servers are all the members"),
        "{assumed}"
    );
    assert!(
        verdict(vec![down("n1"), replica("n2", 5, 7)], Some("async"))
            .contains("acknowledged writes may be lost; a-n2 is the most advanced")
    );
    assert!(verdict(vec![replica("n2", 5, 7)], None).contains("pass --quorum"));
    assert!(verdict(vec![down("n1")], Some("acks 1")).contains("no replica answered"));
    assert!(
        verdict(
            vec![
                replica_at("n2", 1, 5, 7, "h7"),
                replica_at("n3", 1, 5, 7, "x7")
            ],
            Some("acks 1")
        )
        .contains("diverged")
    );
}

#[test]
fn a_log_of_an_older_epoch_could_miss_everything_past_its_commit_point() {
    let listed = vec![
        down("n1"),
        replica_at("n2", 1, 5, 9, "h9"),
        replica_at("n3", 2, 5, 7, "h7"),
    ];
    let result = plan("app", &listed, Some(&"acks 1".parse().expect("policy")));
    let missing: Vec<(&str, u64, bool)> = result
        .candidates
        .iter()
        .map(|c| (c.node.as_str(), c.missing_txs, c.safe))
        .collect();
    // n2's transactions 6 to 9 are of epoch 1, which n3's primary superseded after tx 5.
    assert_eq!(missing, [("n3", 0, true), ("n2", 2, false)]);
}

#[test]
fn failover_proofs_follow_the_plans_rule() {
    use replication_core::coordinator::Proof;
    let members = vec!["n2/app".to_string(), "n3/app".into(), "n4/app".into()];
    let proof = |voters: &[&str], needed| Proof {
        voters: voters.iter().map(|v| v.to_string()).collect(),
        needed,
    };
    let of = |text: &str| proofs(&text.parse::<Quorum>().expect("a policy"), &members);
    // k of the named voters: n - k + 1 of them.
    assert_eq!(of("any 1 (n2,n3)"), vec![proof(&["n2", "n3"], 2)]);
    assert_eq!(
        of("first 2 (n2,n3,n4)"),
        vec![proof(&["n2", "n3", "n4"], 2)]
    );
    // k of the membership.
    assert_eq!(of("acks 2"), vec![proof(&["n2", "n3", "n4"], 2)]);
    // `majority` may have committed on one copy while the membership was smaller: all.
    assert_eq!(of("majority"), vec![proof(&["n2", "n3", "n4"], 3)]);
    assert_eq!(
        of("majority (n2,n3,n4)"),
        vec![proof(&["n2", "n3", "n4"], 2)]
    );
    // Each part of `A and B` is a proof of its own; async proves nothing.
    assert_eq!(
        of("any 1 (n2) and acks 2"),
        vec![proof(&["n2"], 1), proof(&["n2", "n3", "n4"], 2)]
    );
    assert!(of("async").is_empty());
}
