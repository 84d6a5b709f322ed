//! A list query as parameterized SQL, for SQLite and Postgres: every value a
//! query names is a bound parameter, never text in the statement.
//!
//! Search attributes live in `search_attributes (run_id, name, kind, ord,
//! s_value, i_value, d_value)`, a row per value (a `KeywordList` has one per
//! keyword): text kinds in `s_value`; `Int`, `Bool` (0/1) and `Datetime` (ms)
//! in `i_value`; `Double` in `d_value`. A comparison is an `EXISTS` over the
//! run's rows of that name, with the semantics of [`super::eval`].

use super::parse_time;
use super::query::{Attribute, Expr, Literal, Op, OrderBy, SystemAttribute};
use crate::env::ListQuery;

/// Which SQL the statement is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `?N` parameters; text compares bytewise already.
    Sqlite,
    /// `$N` parameters; text compared with `COLLATE "C"` (bytewise).
    Postgres,
}

/// A bound value.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlParam {
    /// TEXT.
    Text(String),
    /// INTEGER / BIGINT.
    Int(i64),
    /// REAL / DOUBLE PRECISION.
    Double(f64),
}

/// A statement and its parameters, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL.
    pub sql: String,
    /// `params[i]` binds parameter `i + 1`.
    pub params: Vec<SqlParam>,
}

/// The kind groups a literal may compare with: (kind condition, column).
const TEXTS: (&str, &str) = ("s.kind IN ('Keyword', 'Text', 'KeywordList')", "s.s_value");
const DATETIME: (&str, &str) = ("s.kind = 'Datetime'", "s.i_value");
const INT: (&str, &str) = ("s.kind = 'Int'", "s.i_value");
const DOUBLE: (&str, &str) = ("s.kind = 'Double'", "s.d_value");
const BOOL: (&str, &str) = ("s.kind = 'Bool'", "s.i_value");

struct Builder {
    dialect: Dialect,
    params: Vec<SqlParam>,
}

impl Builder {
    fn param(&mut self, value: SqlParam) -> String {
        self.params.push(value);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    /// A text column, compared bytewise.
    fn text(&self, column: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => column.to_string(),
            Dialect::Postgres => format!("{column} COLLATE \"C\""),
        }
    }

    fn expr(&mut self, expr: &Expr) -> String {
        match expr {
            Expr::And(l, r) => format!("({} AND {})", self.expr(l), self.expr(r)),
            Expr::Or(l, r) => format!("({} OR {})", self.expr(l), self.expr(r)),
            Expr::Compare(Attribute::System(system), op, literal) => {
                let column = self.system_column(*system);
                let value = self.system_param(*system, literal);
                format!("{column} {} {value}", op.sql())
            }
            Expr::In(Attribute::System(system), literals) => {
                let column = self.system_column(*system);
                let values: Vec<String> = literals
                    .iter()
                    .map(|l| self.system_param(*system, l))
                    .collect();
                format!("{column} IN ({})", values.join(", "))
            }
            Expr::Between(Attribute::System(system), low, high) => {
                let column = self.system_column(*system);
                let low = self.system_param(*system, low);
                let high = self.system_param(*system, high);
                format!("({column} >= {low} AND {column} <= {high})")
            }
            Expr::Compare(Attribute::Custom(name), Op::Ne, literal) => {
                let comparable: Vec<String> = interpretations(literal)
                    .into_iter()
                    .map(|((kind, _), _)| kind.to_string())
                    .collect();
                let some = self.exists(name, &comparable.join(" OR "));
                let equal = self.typed(literal, Op::Eq);
                let none_equal = self.exists(name, &equal.join(" OR "));
                format!("({some} AND NOT {none_equal})")
            }
            Expr::Compare(Attribute::Custom(name), op, literal) => {
                let typed = self.typed(literal, *op);
                self.exists(name, &typed.join(" OR "))
            }
            Expr::In(Attribute::Custom(name), literals) => {
                let typed: Vec<String> = literals
                    .iter()
                    .flat_map(|l| self.typed(l, Op::Eq))
                    .collect();
                self.exists(name, &typed.join(" OR "))
            }
            Expr::Between(Attribute::Custom(name), low, high) => {
                let ranges = self.ranges(low, high);
                self.exists(name, &ranges.join(" OR "))
            }
        }
    }

    fn exists(&mut self, name: &str, condition: &str) -> String {
        let name = self.param(SqlParam::Text(name.to_string()));
        let condition = if condition.is_empty() {
            "FALSE"
        } else {
            condition
        };
        format!(
            "EXISTS (SELECT 1 FROM search_attributes s WHERE s.run_id = runs.run_id \
             AND s.name = {name} AND ({condition}))"
        )
    }

    /// `(kind AND column op literal)` for each kind the literal can mean.
    fn typed(&mut self, literal: &Literal, op: Op) -> Vec<String> {
        interpretations(literal)
            .into_iter()
            .map(|((kind, column), value)| {
                let column = self.typed_column(column);
                let value = self.param(value);
                format!("({kind} AND {column} {} {value})", op.sql())
            })
            .collect()
    }

    /// `(kind AND column >= low AND column <= high)` for each kind both mean.
    fn ranges(&mut self, low: &Literal, high: &Literal) -> Vec<String> {
        let highs = interpretations(high);
        let mut out = Vec::new();
        for ((kind, column), low_value) in interpretations(low) {
            let Some((_, high_value)) = highs.iter().find(|(group, _)| group.0 == kind) else {
                continue;
            };
            let column = self.typed_column(column);
            let low_param = self.param(low_value);
            let high_param = self.param(high_value.clone());
            out.push(format!(
                "({kind} AND {column} >= {low_param} AND {column} <= {high_param})"
            ));
        }
        out
    }

    fn typed_column(&self, column: &str) -> String {
        if column == "s.s_value" {
            self.text(column)
        } else {
            column.to_string()
        }
    }

    fn system_column(&self, system: SystemAttribute) -> String {
        let column = match system {
            SystemAttribute::WorkflowId => "runs.workflow_id",
            SystemAttribute::WorkflowType => "runs.workflow_type",
            SystemAttribute::RunId => "runs.run_id",
            SystemAttribute::ExecutionStatus => "runs.status",
            SystemAttribute::StartTime => return "runs.start_time_ms".to_string(),
            SystemAttribute::CloseTime => return "runs.close_time_ms".to_string(),
            SystemAttribute::TaskQueue => "runs.task_queue",
        };
        self.text(column)
    }

    fn system_param(&mut self, system: SystemAttribute, literal: &Literal) -> String {
        let Literal::Text(text) = literal else {
            unreachable!("the parser gives system attributes quoted literals")
        };
        let value = if system.is_time() {
            let time = parse_time(text).expect("the parser checked the time");
            SqlParam::Int(i64::try_from(time.0).unwrap_or(i64::MAX))
        } else {
            SqlParam::Text(text.clone())
        };
        self.param(value)
    }

    fn order(&self, order_by: Option<OrderBy>) -> String {
        let Some(order) = order_by else {
            return "ORDER BY runs.run_id".to_string();
        };
        let column = self.system_column(order.attribute);
        let direction = if order.descending { " DESC" } else { "" };
        let bare = column.trim_end_matches(" COLLATE \"C\"");
        format!("ORDER BY {bare} IS NULL, {column}{direction}, runs.run_id")
    }
}

/// The kinds `literal` can mean, each with its bound value.
fn interpretations(literal: &Literal) -> Vec<((&'static str, &'static str), SqlParam)> {
    match literal {
        Literal::Text(text) => {
            let mut out = vec![(TEXTS, SqlParam::Text(text.clone()))];
            if let Some(time) = parse_time(text) {
                out.push((
                    DATETIME,
                    SqlParam::Int(i64::try_from(time.0).unwrap_or(i64::MAX)),
                ));
            }
            out
        }
        Literal::Int(i) => vec![
            (INT, SqlParam::Int(*i)),
            (DOUBLE, SqlParam::Double(*i as f64)),
        ],
        Literal::Double(d) => vec![(DOUBLE, SqlParam::Double(*d))],
        Literal::Bool(b) => vec![(BOOL, SqlParam::Int(i64::from(*b)))],
    }
}

/// The `SELECT` of `list`: `columns` of `runs` matching its filters and query,
/// ordered, from its offset, at most its limit.
pub fn list_statement(dialect: Dialect, columns: &str, list: &ListQuery) -> Statement {
    let mut builder = Builder {
        dialect,
        params: Vec::new(),
    };
    let mut conditions: Vec<String> = Vec::new();
    if let Some(status) = list.status {
        let value = builder.param(SqlParam::Text(status.as_str().to_string()));
        conditions.push(format!("runs.status = {value}"));
    }
    if let Some(workflow_type) = &list.workflow_type {
        let value = builder.param(SqlParam::Text(workflow_type.clone()));
        conditions.push(format!("runs.workflow_type = {value}"));
    }
    if let Some(after_run_id) = &list.after_run_id {
        let value = builder.param(SqlParam::Text(after_run_id.clone()));
        conditions.push(format!("runs.run_id > {value}"));
    }
    let query = list.query.as_ref();
    if let Some(filter) = query.and_then(|q| q.filter.as_ref()) {
        conditions.push(builder.expr(filter));
    }
    let mut sql = format!("SELECT {columns} FROM runs");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push(' ');
    sql.push_str(&builder.order(query.and_then(|q| q.order_by)));
    let limit = builder.param(SqlParam::Int(i64::try_from(list.limit).unwrap_or(i64::MAX)));
    let offset = builder.param(SqlParam::Int(
        i64::try_from(list.offset).unwrap_or(i64::MAX),
    ));
    sql.push_str(&format!(" LIMIT {limit} OFFSET {offset}"));
    assert!(!builder.params.is_empty());
    Statement {
        sql,
        params: builder.params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visibility::parse_query;

    fn statement(dialect: Dialect, text: &str) -> Statement {
        let list = ListQuery {
            query: Some(parse_query(text).unwrap()),
            limit: 10,
            ..ListQuery::default()
        };
        list_statement(dialect, "run_id", &list)
    }

    #[test]
    fn values_are_parameters_never_text() {
        let sneaky = "x'); DROP TABLE runs; --";
        let text = format!("CustomerId = \"{sneaky}\" AND WorkflowId != \"{sneaky}\"");
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let statement = statement(dialect, &text);
            assert!(!statement.sql.contains("DROP"), "{}", statement.sql);
            assert!(
                statement
                    .params
                    .contains(&SqlParam::Text(sneaky.to_string()))
            );
        }
    }

    #[test]
    fn the_sqlite_statement_reads_as_expected() {
        let statement = statement(Dialect::Sqlite, "N > 2 ORDER BY CloseTime DESC");
        assert_eq!(
            statement.sql,
            "SELECT run_id FROM runs WHERE EXISTS (SELECT 1 FROM search_attributes s \
             WHERE s.run_id = runs.run_id AND s.name = ?3 AND ((s.kind = 'Int' AND \
             s.i_value > ?1) OR (s.kind = 'Double' AND s.d_value > ?2))) \
             ORDER BY runs.close_time_ms IS NULL, runs.close_time_ms DESC, runs.run_id \
             LIMIT ?4 OFFSET ?5"
        );
        assert_eq!(
            statement.params,
            [
                SqlParam::Int(2),
                SqlParam::Double(2.0),
                SqlParam::Text("N".into()),
                SqlParam::Int(10),
                SqlParam::Int(0)
            ]
        );
    }
}
