//! Search attributes: storage holds what each run's history records, every
//! upsert is recorded once, and a list query answers what a filter of that
//! view by hand answers.
//!
//! | invariant | what must hold |
//! |---|---|
//! | `search attributes: stored as recorded` | a run's stored attributes are its start's with every recorded upsert applied in order (last write wins) |
//! | `search attributes: carried over` | a run that continues another (continue-as-new, retry, cron) starts with the attributes the other ended with, but `TemporalChangeVersion` |
//! | `search attributes: patches upserted once` | the k-th `TemporalChangeVersion` upsert of a run lists its first k `core_patch` patches |
//! | `list queries` | each of a set of list queries (every operator, ORDER BY, pages) answers the runs, in the order, that a filter written by hand over the histories' view answers |

use std::collections::BTreeMap;

use retrace::env::{ListQuery, MemoryStorage, RunRecord, RunStatus, Storage};
use retrace::history::{EventKind, History};
use retrace::visibility::{CHANGE_VERSION, SearchAttributes, SearchValue, parse_query};
use retrace::workflow::PATCH_MARKER_NAME;

use super::Violation;

/// The run's attributes as its history records them: the start's, then
/// every upsert in order.
pub fn recorded(history: &History) -> SearchAttributes {
    let mut attributes = SearchAttributes::new();
    for event in history.events() {
        match &event.kind {
            EventKind::WorkflowExecutionStarted(a) => {
                attributes.clone_from(&a.search_attributes);
            }
            EventKind::UpsertWorkflowSearchAttributes(a) => {
                let set = a.search_attributes.iter();
                attributes.extend(set.map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => {}
        }
    }
    attributes
}

/// Checks every valid history against its stored record, then the list queries.
pub async fn check_visibility(
    storage: &MemoryStorage,
    histories: &BTreeMap<String, History>,
) -> Vec<Violation> {
    let all = ListQuery {
        limit: usize::MAX,
        ..ListQuery::default()
    };
    let records: Vec<RunRecord> = storage
        .list_runs(all)
        .await
        .expect("memory storage reads never fail")
        .into_iter()
        .filter(|record| histories.contains_key(&record.run_id))
        .collect();
    let mut violations = Vec::new();
    let mut view: Vec<(RunRecord, SearchAttributes)> = Vec::new();
    for record in records {
        let history = &histories[&record.run_id];
        let recorded = recorded(history);
        if record.search_attributes != recorded {
            violations.push(
                Violation::new(
                    "search attributes: stored as recorded",
                    format!(
                        "storage holds {:?}, the history records {recorded:?}",
                        record.search_attributes
                    ),
                )
                .at(history, None),
            );
        }
        violations.extend(check_carried(history, histories));
        violations.extend(check_patches(history));
        view.push((record, recorded));
    }
    violations.extend(check_queries(storage, &view).await);
    violations
}

fn check_carried(history: &History, histories: &BTreeMap<String, History>) -> Option<Violation> {
    let Some(EventKind::WorkflowExecutionStarted(started)) =
        history.events().first().map(|e| &e.kind)
    else {
        return None;
    };
    let previous = histories.get(started.continued_execution_run_id.as_ref()?)?;
    let mut expected = recorded(previous);
    expected.remove(CHANGE_VERSION);
    (started.search_attributes != expected).then(|| {
        Violation::new(
            "search attributes: carried over",
            format!(
                "the run starts with {:?}, the run it continues ended with {expected:?}",
                started.search_attributes
            ),
        )
        .at(history, Some(1))
    })
}

fn check_patches(history: &History) -> Option<Violation> {
    let mut patches: Vec<String> = Vec::new();
    let mut upserts: Vec<(u64, SearchValue)> = Vec::new();
    for event in history.events() {
        match &event.kind {
            EventKind::MarkerRecorded(m)
                if m.marker_name == PATCH_MARKER_NAME && m.details["deprecated"] != true =>
            {
                patches.extend(m.details["patch_id"].as_str().map(str::to_string));
            }
            EventKind::UpsertWorkflowSearchAttributes(a) => {
                if let Some(value) = a.search_attributes.get(CHANGE_VERSION) {
                    upserts.push((event.event_id, value.clone()));
                }
            }
            _ => {}
        }
    }
    let expected: Vec<SearchValue> = (1..=patches.len())
        .map(|k| SearchValue::KeywordList(patches[..k].to_vec()))
        .collect();
    let got: Vec<SearchValue> = upserts.iter().map(|(_, v)| v.clone()).collect();
    (got != expected).then(|| {
        Violation::new(
            "search attributes: patches upserted once",
            format!("patches {patches:?} recorded {CHANGE_VERSION} upserts {got:?}, expected {expected:?}"),
        )
        .at(history, upserts.first().map(|(id, _)| *id))
    })
}

type Filter = fn(&RunRecord, &SearchAttributes) -> bool;

fn keyword(attributes: &SearchAttributes, name: &str) -> Option<String> {
    match attributes.get(name) {
        Some(SearchValue::Keyword(s)) => Some(s.clone()),
        _ => None,
    }
}

fn double(attributes: &SearchAttributes, name: &str) -> Option<f64> {
    match attributes.get(name) {
        Some(SearchValue::Double(d)) => Some(*d),
        _ => None,
    }
}

/// Queries and the same filters written by hand.
const QUERIES: [(&str, Filter); 8] = [
    ("Stage = 's1'", |_, a| {
        keyword(a, "Stage").as_deref() == Some("s1")
    }),
    ("Stage != 's1'", |_, a| {
        keyword(a, "Stage").is_some_and(|s| s != "s1")
    }),
    ("Stage IN ('s0', 's2', 'zz')", |_, a| {
        matches!(keyword(a, "Stage").as_deref(), Some("s0" | "s2"))
    }),
    ("Tier >= 2 AND ExecutionStatus = 'Completed'", |r, a| {
        matches!(a.get("Tier"), Some(SearchValue::Int(t)) if *t >= 2)
            && r.status == RunStatus::Completed
    }),
    ("Flag = true OR Score < 0.5", |_, a| {
        a.get("Flag") == Some(&SearchValue::Bool(true))
            || double(a, "Score").is_some_and(|s| s < 0.5)
    }),
    ("Score BETWEEN 0.25 AND 0.5", |_, a| {
        double(a, "Score").is_some_and(|s| (0.25..=0.5).contains(&s))
    }),
    (
        "TemporalChangeVersion != 'none' AND NOT_SET != 1 OR Tier < 1",
        |_, a| matches!(a.get("Tier"), Some(SearchValue::Int(t)) if *t < 1),
    ),
    (
        "(Stage = 's3' OR Flag = false) AND Tier != 0 ORDER BY StartTime DESC",
        |_, a| {
            let stage = keyword(a, "Stage").as_deref() == Some("s3");
            let flag = a.get("Flag") == Some(&SearchValue::Bool(false));
            let tier = matches!(a.get("Tier"), Some(SearchValue::Int(t)) if *t != 0);
            (stage || flag) && tier
        },
    ),
];

/// Page size of the paged queries: small, so runs span several pages.
const QUERY_PAGE_SIZE: usize = 7;

async fn check_queries(
    storage: &MemoryStorage,
    view: &[(RunRecord, SearchAttributes)],
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (text, filter) in QUERIES {
        let query = parse_query(text).expect("the checks' queries parse");
        let mut expected: Vec<(u64, String)> = view
            .iter()
            .filter(|(record, attributes)| filter(record, attributes))
            .map(|(record, _)| (record.start_time.as_millis(), record.run_id.clone()))
            .collect();
        if query.order_by.is_some() {
            expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        }
        let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
        let mut listed: Vec<String> = Vec::new();
        for offset in (0..).step_by(QUERY_PAGE_SIZE) {
            let page = ListQuery {
                query: Some(query.clone()),
                limit: QUERY_PAGE_SIZE,
                offset,
                ..ListQuery::default()
            };
            let page = storage
                .list_runs(page)
                .await
                .expect("memory storage reads never fail");
            let last = page.len() < QUERY_PAGE_SIZE;
            listed.extend(
                page.into_iter()
                    .map(|r| r.run_id)
                    .filter(|id| view.iter().any(|(record, _)| record.run_id == *id)),
            );
            if last {
                break;
            }
        }
        if listed != expected {
            violations.push(Violation::new(
                "list queries",
                format!("{text}: storage lists {listed:?}, the histories say {expected:?}"),
            ));
        }
    }
    violations
}
