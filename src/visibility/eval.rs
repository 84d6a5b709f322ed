//! A query evaluated over run records in memory: the semantics the SQL
//! translation ([`super::sql`]) must reproduce row for row.
//!
//! A comparison on a search attribute holds if one of its values (a
//! `KeywordList` has several) compares with the literal and satisfies it. A
//! literal compares with the kinds it can mean: text with `Keyword`, `Text`
//! and `KeywordList` (bytewise) and, if it is an RFC 3339 time, `Datetime`; an
//! integer with `Int` and `Double`; a decimal with `Double`; a boolean with
//! `Bool`. `!=` holds if the run has a value the literal compares with and
//! none equal to it. A run without the attribute matches no comparison; so
//! does an open run on `CloseTime`.

use std::cmp::Ordering;

use super::query::{Attribute, Expr, Literal, Op, OrderBy, Query, SystemAttribute};
use super::{SearchValue, parse_time};
use crate::env::RunRecord;

/// One value of an attribute, typed for comparison.
#[derive(Clone, Debug, PartialEq)]
enum Scalar<'a> {
    Text(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
    Time(i64),
}

/// The comparable values of `attribute` on `run` (none if it lacks it).
fn values<'a>(run: &'a RunRecord, attribute: &Attribute) -> Vec<Scalar<'a>> {
    let time = |t: crate::types::Timestamp| Scalar::Time(i64::try_from(t.0).unwrap_or(i64::MAX));
    match attribute {
        Attribute::System(system) => match system {
            SystemAttribute::WorkflowId => vec![Scalar::Text(&run.workflow_id)],
            SystemAttribute::WorkflowType => vec![Scalar::Text(&run.workflow_type)],
            SystemAttribute::RunId => vec![Scalar::Text(&run.run_id)],
            SystemAttribute::ExecutionStatus => vec![Scalar::Text(run.status.as_str())],
            SystemAttribute::StartTime => vec![time(run.start_time)],
            SystemAttribute::CloseTime => run.close_time.map(time).into_iter().collect(),
            SystemAttribute::TaskQueue => vec![Scalar::Text(&run.task_queue)],
        },
        Attribute::Custom(name) => match run.search_attributes.get(name) {
            None => Vec::new(),
            Some(SearchValue::Keyword(s) | SearchValue::Text(s)) => vec![Scalar::Text(s)],
            Some(SearchValue::Int(i)) => vec![Scalar::Int(*i)],
            Some(SearchValue::Double(d)) => vec![Scalar::Double(*d)],
            Some(SearchValue::Bool(b)) => vec![Scalar::Bool(*b)],
            Some(SearchValue::Datetime(t)) => vec![time(*t)],
            Some(SearchValue::KeywordList(list)) => {
                list.iter().map(|k| Scalar::Text(k.as_str())).collect()
            }
        },
    }
}

/// How `value` compares with `literal`, if the literal can mean its kind.
fn compare(value: &Scalar<'_>, literal: &Literal) -> Option<Ordering> {
    match (value, literal) {
        (Scalar::Text(v), Literal::Text(l)) => Some(v.as_bytes().cmp(l.as_bytes())),
        (Scalar::Time(v), Literal::Text(l)) => {
            let l = i64::try_from(parse_time(l)?.0).unwrap_or(i64::MAX);
            Some(v.cmp(&l))
        }
        (Scalar::Int(v), Literal::Int(l)) => Some(v.cmp(l)),
        (Scalar::Double(v), Literal::Int(l)) => v.partial_cmp(&(*l as f64)),
        (Scalar::Double(v), Literal::Double(l)) => v.partial_cmp(l),
        (Scalar::Bool(v), Literal::Bool(l)) => Some(v.cmp(l)),
        _ => None,
    }
}

/// Whether `run` matches `expr`.
pub fn matches(run: &RunRecord, expr: &Expr) -> bool {
    match expr {
        Expr::And(left, right) => matches(run, left) && matches(run, right),
        Expr::Or(left, right) => matches(run, left) || matches(run, right),
        Expr::Compare(attribute, Op::Ne, literal) => {
            let values = values(run, attribute);
            let comparable: Vec<Ordering> =
                values.iter().filter_map(|v| compare(v, literal)).collect();
            !comparable.is_empty() && !comparable.contains(&Ordering::Equal)
        }
        Expr::Compare(attribute, op, literal) => values(run, attribute)
            .iter()
            .any(|v| compare(v, literal).is_some_and(|o| op.holds(o))),
        Expr::In(attribute, literals) => values(run, attribute).iter().any(|v| {
            literals
                .iter()
                .any(|l| compare(v, l) == Some(Ordering::Equal))
        }),
        Expr::Between(attribute, low, high) => values(run, attribute).iter().any(|v| {
            let above = compare(v, low).is_some_and(|o| o != Ordering::Less);
            let below = compare(v, high).is_some_and(|o| o != Ordering::Greater);
            above && below
        }),
    }
}

/// Whether `run` matches the query's filter (every run if it has none).
pub fn matches_query(run: &RunRecord, query: &Query) -> bool {
    query.filter.as_ref().is_none_or(|expr| matches(run, expr))
}

/// Orders runs as `ORDER BY` says, then by run id; a run without the
/// attribute (an open run's `CloseTime`) comes last either way.
pub fn order(runs: &mut [RunRecord], order_by: Option<OrderBy>) {
    runs.sort_by(|a, b| {
        let by_attribute = match order_by {
            None => Ordering::Equal,
            Some(order) => {
                let attribute = Attribute::System(order.attribute);
                let (va, vb) = (values(a, &attribute), values(b, &attribute));
                match (va.first(), vb.first()) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) => {
                        let ordering = scalar_order(x, y);
                        if order.descending {
                            ordering.reverse()
                        } else {
                            ordering
                        }
                    }
                }
            }
        };
        by_attribute.then_with(|| a.run_id.cmp(&b.run_id))
    });
}

fn scalar_order(a: &Scalar<'_>, b: &Scalar<'_>) -> Ordering {
    match (a, b) {
        (Scalar::Text(x), Scalar::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Scalar::Time(x), Scalar::Time(y)) => x.cmp(y),
        _ => Ordering::Equal, // One system attribute has one type.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::RunStatus;
    use crate::types::Timestamp;
    use crate::visibility::{SearchAttributes, parse_query};

    fn run(id: &str, attributes: &[(&str, SearchValue)]) -> RunRecord {
        RunRecord {
            run_id: id.to_string(),
            workflow_id: format!("wf-{id}"),
            workflow_type: "checkout".to_string(),
            task_queue: "q".to_string(),
            status: RunStatus::Running,
            start_time: Timestamp(1_796_083_200_000),
            close_time: None,
            next_event_id: 1,
            version: 1,
            state: Vec::new(),
            search_attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<SearchAttributes>(),
        }
    }

    fn hits(runs: &[RunRecord], text: &str) -> Vec<String> {
        let query = parse_query(text).unwrap();
        runs.iter()
            .filter(|r| matches_query(r, &query))
            .map(|r| r.run_id.clone())
            .collect()
    }

    #[test]
    fn comparisons_follow_the_kinds() {
        let runs = [
            run(
                "a",
                &[
                    ("C", SearchValue::Keyword("c-1".into())),
                    ("N", SearchValue::Int(3)),
                ],
            ),
            run(
                "b",
                &[
                    ("C", SearchValue::Keyword("c-2".into())),
                    ("N", SearchValue::Double(3.5)),
                ],
            ),
            run(
                "c",
                &[("T", SearchValue::KeywordList(vec!["x".into(), "y".into()]))],
            ),
            run(
                "d",
                &[("D", SearchValue::Datetime(Timestamp(1_796_083_200_000)))],
            ),
        ];
        assert_eq!(hits(&runs, "C = 'c-1'"), ["a"]);
        assert_eq!(hits(&runs, "C != 'c-1'"), ["b"]);
        assert_eq!(hits(&runs, "N >= 3"), ["a", "b"]);
        assert_eq!(hits(&runs, "N > 3.2"), ["b"]);
        assert_eq!(hits(&runs, "N BETWEEN 3 AND 3"), ["a"]);
        assert_eq!(hits(&runs, "T = 'y'"), ["c"]);
        assert_eq!(hits(&runs, "T != 'y'"), Vec::<String>::new());
        assert_eq!(hits(&runs, "T IN ('q', 'x')"), ["c"]);
        assert_eq!(hits(&runs, "D >= '2026-12-01T00:00:00Z'"), ["d"]);
        assert_eq!(
            hits(&runs, "CloseTime > '2020-01-01T00:00:00Z'"),
            Vec::<String>::new()
        );
        assert_eq!(hits(&runs, "C = 'c-1' OR T = 'x'"), ["a", "c"]);
        assert_eq!(hits(&runs, "ExecutionStatus = 'Running' AND N <= 3"), ["a"]);
    }
}
