//! The list query language: a small subset of Temporal's visibility queries.
//!
//! ```text
//! query     := [or] [ORDER BY attribute [ASC | DESC]]
//! or        := and (OR and)*
//! and       := primary (AND primary)*
//! primary   := '(' or ')' | attribute op literal
//!            | attribute IN '(' literal (',' literal)* ')'
//!            | attribute BETWEEN literal AND literal
//! op        := = | != | <> | < | > | <= | >=
//! literal   := 'text' | "text" | integer | decimal | true | false
//! attribute := name | `name`
//! ```
//!
//! Keywords are case-insensitive. System attributes (`WorkflowId`,
//! `WorkflowType`, `RunId`, `ExecutionStatus`, `StartTime`, `CloseTime`,
//! `TaskQueue`) are checked here: their literals must fit them (a status name,
//! an RFC 3339 time). Every error names its byte position and what was expected.

use super::{SYSTEM_ATTRIBUTES, parse_time};
use crate::env::RunStatus;

/// Bytes of a query.
pub const QUERY_BYTES_MAX: usize = 4_096;
/// Parentheses nested in a query.
pub const QUERY_DEPTH_MAX: usize = 8;
/// Values in one `IN` list.
pub const QUERY_IN_VALUES_MAX: usize = 64;
/// Comparisons in a query (each is a subquery in SQL).
pub const QUERY_PREDICATES_MAX: usize = 32;

/// A query that does not parse, or breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query error at byte {position}: {message}")]
pub struct QueryError {
    /// Byte offset in the query text.
    pub position: usize,
    /// What was expected, or what is wrong.
    pub message: String,
}

/// An attribute a query names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attribute {
    /// One of the run's own columns.
    System(SystemAttribute),
    /// A search attribute, by name.
    Custom(String),
}

/// The system attributes, each a column of the run's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum SystemAttribute {
    WorkflowId,
    WorkflowType,
    RunId,
    ExecutionStatus,
    StartTime,
    CloseTime,
    TaskQueue,
}

impl SystemAttribute {
    const ALL: [SystemAttribute; 7] = [
        SystemAttribute::WorkflowId,
        SystemAttribute::WorkflowType,
        SystemAttribute::RunId,
        SystemAttribute::ExecutionStatus,
        SystemAttribute::StartTime,
        SystemAttribute::CloseTime,
        SystemAttribute::TaskQueue,
    ];

    /// Its name in queries.
    pub fn name(self) -> &'static str {
        SYSTEM_ATTRIBUTES[self as usize]
    }

    /// True for the times (compared as RFC 3339 literals).
    pub fn is_time(self) -> bool {
        matches!(
            self,
            SystemAttribute::StartTime | SystemAttribute::CloseTime
        )
    }
}

/// A literal as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// Quoted text (for a time attribute, checked to be RFC 3339).
    Text(String),
    /// An integer.
    Int(i64),
    /// A decimal (finite).
    Double(f64),
    /// `true` or `false`.
    Bool(bool),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Op {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Ge => ">=",
        }
    }

    /// Whether `ordering` (value compared with literal) satisfies the operator.
    pub fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Op::Eq => ordering == Equal,
            Op::Ne => ordering != Equal,
            Op::Lt => ordering == Less,
            Op::Gt => ordering == Greater,
            Op::Le => ordering != Greater,
            Op::Ge => ordering != Less,
        }
    }
}

/// A filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// One holds.
    Or(Box<Expr>, Box<Expr>),
    /// `attribute op literal`.
    Compare(Attribute, Op, Literal),
    /// `attribute IN (literals)`: equal to one of them.
    In(Attribute, Vec<Literal>),
    /// `attribute BETWEEN low AND high`, both ends included.
    Between(Attribute, Literal, Literal),
}

/// `ORDER BY`: a system attribute and the direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderBy {
    /// The attribute (system attributes only).
    pub attribute: SystemAttribute,
    /// Descending if true.
    pub descending: bool,
}

/// A parsed query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// The filter; `None` matches every run.
    pub filter: Option<Expr>,
    /// The order; by run id if `None`.
    pub order_by: Option<OrderBy>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Backquoted(String),
    Number(String),
    Symbol(&'static str),
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("{w:?}"),
            Token::Quoted(q) => format!("the text {q:?}"),
            Token::Backquoted(b) => format!("`{b}`"),
            Token::Number(n) => format!("the number {n}"),
            Token::Symbol(s) => format!("{s:?}"),
            Token::End => "the end of the query".to_string(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

const SYMBOLS: [&str; 10] = ["!=", "<>", "<=", ">=", "=", "<", ">", "(", ")", ","];

fn error(position: usize, message: impl Into<String>) -> QueryError {
    QueryError {
        position,
        message: message.into(),
    }
}

/// Splits the query into (position, token)s, ending with `End`.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, QueryError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let c = bytes[at];
        let start = at;
        if c.is_ascii_whitespace() {
            at += 1;
            continue;
        }
        let token = if c == b'\'' || c == b'"' || c == b'`' {
            let end = text[at + 1..]
                .find(c as char)
                .ok_or_else(|| error(start, format!("unterminated {}", c as char)))?;
            let inner = text[at + 1..at + 1 + end].to_string();
            at += end + 2;
            match c {
                b'`' => Token::Backquoted(inner),
                _ => Token::Quoted(inner),
            }
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            at += 1;
            while at < bytes.len()
                && (bytes[at].is_ascii_alphanumeric() || matches!(bytes[at], b'.' | b'+' | b'-'))
            {
                at += 1;
            }
            Token::Number(text[start..at].to_string())
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
                at += 1;
            }
            Token::Word(text[start..at].to_string())
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| text[at..].starts_with(**s)) {
            at += symbol.len();
            Token::Symbol(symbol)
        } else {
            let found = text[at..].chars().next().unwrap_or('?');
            return Err(error(at, format!("unexpected character {found:?}")));
        };
        tokens.push((start, token));
    }
    tokens.push((text.len(), Token::End));
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    depth: usize,
    predicates: usize,
}

/// Parses a list query (empty text: every run, by run id).
pub fn parse_query(text: &str) -> Result<Query, QueryError> {
    if text.len() > QUERY_BYTES_MAX {
        return Err(error(
            QUERY_BYTES_MAX,
            format!(
                "the query is {} bytes, over the limit of {QUERY_BYTES_MAX}",
                text.len()
            ),
        ));
    }
    let mut parser = Parser {
        tokens: tokenize(text)?,
        next: 0,
        depth: 0,
        predicates: 0,
    };
    let filter = if parser.peek().is_keyword("ORDER") || *parser.peek() == Token::End {
        None
    } else {
        Some(parser.or()?)
    };
    let order_by = parser.order_by()?;
    if *parser.peek() != Token::End {
        return Err(parser.expected("AND, OR, ORDER BY or the end of the query"));
    }
    assert_eq!(parser.depth, 0);
    Ok(Query { filter, order_by })
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.next].1
    }

    fn position(&self) -> usize {
        self.tokens[self.next].0
    }

    fn advance(&mut self) -> (usize, Token) {
        let token = self.tokens[self.next].clone();
        if token.1 != Token::End {
            self.next += 1;
        }
        token
    }

    fn expected(&self, what: &str) -> QueryError {
        error(
            self.position(),
            format!("expected {what}, found {}", self.peek().describe()),
        )
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), QueryError> {
        if *self.peek() == Token::Symbol(SYMBOLS.iter().find(|s| **s == symbol).expect("known")) {
            self.advance();
            Ok(())
        } else {
            Err(self.expected(&format!("{symbol:?}")))
        }
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.peek().is_keyword("OR") {
            self.advance();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.primary()?;
        while self.peek().is_keyword("AND") {
            self.advance();
            let right = self.primary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        if *self.peek() == Token::Symbol("(") {
            let position = self.position();
            self.advance();
            self.depth += 1;
            if self.depth > QUERY_DEPTH_MAX {
                return Err(error(
                    position,
                    format!("parentheses nest deeper than {QUERY_DEPTH_MAX}"),
                ));
            }
            let inner = self.or()?;
            self.expect_symbol(")")?;
            self.depth -= 1;
            return Ok(inner);
        }
        self.predicate()
    }

    fn attribute(&mut self) -> Result<(usize, Attribute), QueryError> {
        let position = self.position();
        let name = match self.peek() {
            Token::Word(w) if !is_reserved_word(w) => w.clone(),
            Token::Backquoted(b) => b.clone(),
            _ => return Err(self.expected("an attribute name")),
        };
        self.advance();
        let attribute = match SystemAttribute::ALL.iter().find(|a| a.name() == name) {
            Some(system) => Attribute::System(*system),
            None => Attribute::Custom(name),
        };
        Ok((position, attribute))
    }

    fn predicate(&mut self) -> Result<Expr, QueryError> {
        let (position, attribute) = self.attribute()?;
        self.predicates += 1;
        if self.predicates > QUERY_PREDICATES_MAX {
            return Err(error(
                position,
                format!("a query compares at most {QUERY_PREDICATES_MAX} times"),
            ));
        }
        if self.peek().is_keyword("IN") {
            self.advance();
            return self.in_list(attribute);
        }
        if self.peek().is_keyword("BETWEEN") {
            self.advance();
            let low = self.literal(&attribute)?;
            if !self.peek().is_keyword("AND") {
                return Err(self.expected("AND (of BETWEEN … AND …)"));
            }
            self.advance();
            let high = self.literal(&attribute)?;
            return Ok(Expr::Between(attribute, low, high));
        }
        let op = match self.peek() {
            Token::Symbol("=") => Op::Eq,
            Token::Symbol("!=" | "<>") => Op::Ne,
            Token::Symbol("<") => Op::Lt,
            Token::Symbol(">") => Op::Gt,
            Token::Symbol("<=") => Op::Le,
            Token::Symbol(">=") => Op::Ge,
            _ => return Err(self.expected("an operator (=, !=, <, >, <=, >=, IN, BETWEEN)")),
        };
        self.advance();
        let literal = self.literal(&attribute)?;
        Ok(Expr::Compare(attribute, op, literal))
    }

    fn in_list(&mut self, attribute: Attribute) -> Result<Expr, QueryError> {
        self.expect_symbol("(")?;
        let mut values = vec![self.literal(&attribute)?];
        while *self.peek() == Token::Symbol(",") {
            self.advance();
            if values.len() == QUERY_IN_VALUES_MAX {
                return Err(error(
                    self.position(),
                    format!("an IN list holds at most {QUERY_IN_VALUES_MAX} values"),
                ));
            }
            values.push(self.literal(&attribute)?);
        }
        self.expect_symbol(")")?;
        Ok(Expr::In(attribute, values))
    }

    fn literal(&mut self, attribute: &Attribute) -> Result<Literal, QueryError> {
        let position = self.position();
        let literal = match self.peek() {
            Token::Quoted(text) => Literal::Text(text.clone()),
            Token::Number(text) => number(position, text)?,
            Token::Word(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Token::Word(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return Err(self.expected("a value ('text', a number, true or false)")),
        };
        self.advance();
        if let Attribute::System(system) = attribute {
            check_system_literal(position, *system, &literal)?;
        }
        Ok(literal)
    }

    fn order_by(&mut self) -> Result<Option<OrderBy>, QueryError> {
        if !self.peek().is_keyword("ORDER") {
            return Ok(None);
        }
        self.advance();
        if !self.peek().is_keyword("BY") {
            return Err(self.expected("BY"));
        }
        self.advance();
        let (position, attribute) = self.attribute()?;
        let Attribute::System(attribute) = attribute else {
            return Err(error(
                position,
                format!("ORDER BY takes a system attribute ({SYSTEM_ATTRIBUTES:?})"),
            ));
        };
        let descending = if self.peek().is_keyword("DESC") {
            self.advance();
            true
        } else {
            if self.peek().is_keyword("ASC") {
                self.advance();
            }
            false
        };
        Ok(Some(OrderBy {
            attribute,
            descending,
        }))
    }
}

fn is_reserved_word(word: &str) -> bool {
    ["AND", "OR", "IN", "BETWEEN", "ORDER", "BY", "ASC", "DESC"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

fn number(position: usize, text: &str) -> Result<Literal, QueryError> {
    if let Ok(int) = text.parse::<i64>() {
        return Ok(Literal::Int(int));
    }
    match text.parse::<f64>() {
        Ok(double) if double.is_finite() => Ok(Literal::Double(double)),
        _ => Err(error(position, format!("{text:?} is not a number"))),
    }
}

fn check_system_literal(
    position: usize,
    system: SystemAttribute,
    literal: &Literal,
) -> Result<(), QueryError> {
    let Literal::Text(text) = literal else {
        return Err(error(
            position,
            format!("{} takes a quoted value", system.name()),
        ));
    };
    if system.is_time() && parse_time(text).is_none() {
        return Err(error(
            position,
            format!(
                "{} takes an RFC 3339 time like \"2026-12-01T00:00:00Z\", not {text:?}",
                system.name()
            ),
        ));
    }
    if system == SystemAttribute::ExecutionStatus && RunStatus::parse(text).is_none() {
        let names: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        return Err(error(
            position,
            format!("ExecutionStatus is one of {names:?}, not {text:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(name: &str) -> Attribute {
        Attribute::Custom(name.to_string())
    }

    #[test]
    fn parses_the_subset() {
        let query = parse_query(
            "WorkflowType = 'checkout' AND (CustomerId IN (\"c-1\", 'c-2') OR Score BETWEEN 1 AND 2.5) \
             order by StartTime desc",
        )
        .unwrap();
        let expected = Expr::And(
            Box::new(Expr::Compare(
                Attribute::System(SystemAttribute::WorkflowType),
                Op::Eq,
                Literal::Text("checkout".into()),
            )),
            Box::new(Expr::Or(
                Box::new(Expr::In(
                    custom("CustomerId"),
                    vec![Literal::Text("c-1".into()), Literal::Text("c-2".into())],
                )),
                Box::new(Expr::Between(
                    custom("Score"),
                    Literal::Int(1),
                    Literal::Double(2.5),
                )),
            )),
        );
        assert_eq!(query.filter, Some(expected));
        let order = query.order_by.unwrap();
        assert_eq!(order.attribute, SystemAttribute::StartTime);
        assert!(order.descending);
        assert_eq!(parse_query("").unwrap(), Query::default());
        let ordered = parse_query("ORDER BY RunId").unwrap();
        assert!(ordered.filter.is_none() && !ordered.order_by.unwrap().descending);
    }

    #[test]
    fn errors_name_the_position_and_what_was_expected() {
        let cases = [
            ("WorkflowType = ", 15, "expected a value"),
            ("WorkflowType 'x'", 13, "expected an operator"),
            ("A = 1 AND", 9, "expected an attribute name"),
            ("(A = 1", 6, "expected \")\""),
            ("A = 1 B = 2", 6, "expected AND, OR, ORDER BY"),
            ("StartTime > 'yesterday'", 12, "RFC 3339"),
            ("ExecutionStatus = 'Open'", 18, "ExecutionStatus is one of"),
            ("WorkflowId = 5", 13, "takes a quoted value"),
            ("A = 'x", 4, "unterminated"),
            (
                "ORDER BY CustomerId",
                9,
                "ORDER BY takes a system attribute",
            ),
            ("A BETWEEN 1 OR 2", 12, "expected AND"),
            ("A = 1 ; drop", 6, "unexpected character"),
        ];
        for (text, position, message) in cases {
            let error = parse_query(text).unwrap_err();
            assert_eq!(error.position, position, "{text}: {error}");
            assert!(error.message.contains(message), "{text}: {error}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let long = format!("A = '{}'", "x".repeat(QUERY_BYTES_MAX));
        assert!(
            parse_query(&long)
                .unwrap_err()
                .message
                .contains("over the limit")
        );
        let deep = format!("{}A = 1{}", "(".repeat(9), ")".repeat(9));
        assert!(
            parse_query(&deep)
                .unwrap_err()
                .message
                .contains("nest deeper")
        );
        let values: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let wide = format!("A IN ({})", values.join(","));
        assert!(
            parse_query(&wide)
                .unwrap_err()
                .message
                .contains("at most 64")
        );
        let many: Vec<&str> = vec!["A = 1"; 33];
        let error = parse_query(&many.join(" OR ")).unwrap_err();
        assert!(error.message.contains("at most 32"));
    }
}
