//! The names a scaffold derives from what the user typed, checked first.

use anyhow::bail;

/// Longest name a scaffold accepts, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Rust keywords (strict and reserved): none can name a module.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "union", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Type names a scaffold's files already use: a workflow or activity of that
/// name would not compile.
const TAKEN_TYPES: &[&str] = &[
    "Activity",
    "ActivityContext",
    "ActivityOptions",
    "ActivityResult",
    "Deserialize",
    "Duration",
    "RetryPolicy",
    "Serialize",
    "Workflow",
    "WorkflowContext",
    "WorkflowResult",
];

/// Crate names a project's own name would shadow.
const TAKEN_CRATES: &[&str] = &[
    "anyhow",
    "core",
    "retrace",
    "retrace_sim",
    "serde",
    "serde_json",
    "std",
    "test",
    "tokio",
    "tracing",
    "tracing_subscriber",
];

/// A name in the forms a scaffold needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// As typed: the package name, or the workflow's or activity's type name.
    pub typed: String,
    /// As a Rust module or crate (`order_payment`).
    pub snake: String,
    /// As a Rust type (`OrderPayment`).
    pub camel: String,
}

impl Names {
    /// A package name: lowercase letters, digits, `_` and `-`, from a letter.
    pub fn of_package(name: &str) -> anyhow::Result<Names> {
        check_shape(
            name,
            "a project",
            "lowercase letters, digits, `_` and `-`",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-',
        )?;
        let snake = name.replace('-', "_");
        if KEYWORDS.contains(&snake.as_str()) || TAKEN_CRATES.contains(&snake.as_str()) {
            bail!(
                "{name:?} cannot name a project: it is a Rust keyword or a crate the project uses"
            );
        }
        Ok(Names::from_snake(name, snake))
    }

    /// A workflow or activity name in snake_case.
    pub fn of_item(name: &str) -> anyhow::Result<Names> {
        check_shape(
            name,
            "a workflow or an activity",
            "lowercase letters, digits and `_`",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
        )?;
        if name.ends_with('_') || name.contains("__") {
            bail!("{name:?} is not snake_case: no trailing or doubled `_` (try \"order_payment\")");
        }
        if KEYWORDS.contains(&name) {
            bail!("{name:?} is a Rust keyword: it cannot name a module");
        }
        let names = Names::from_snake(name, name.to_string());
        if TAKEN_TYPES.contains(&names.camel.as_str()) {
            bail!(
                "{name:?} would name a type {} that the scaffold already imports: choose another name",
                names.camel
            );
        }
        Ok(names)
    }

    fn from_snake(typed: &str, snake: String) -> Names {
        let camel = snake
            .split('_')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect();
        Names {
            typed: typed.to_string(),
            snake,
            camel,
        }
    }
}

fn check_shape(
    name: &str,
    what: &str,
    allowed_text: &str,
    allowed: impl Fn(char) -> bool,
) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        bail!(
            "the name of {what} must be 1 to {NAME_BYTES_MAX} bytes long, not {}",
            name.len()
        );
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!("{name:?} must start with a lowercase letter");
    }
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        bail!("{name:?} has {bad:?}: the name of {what} may hold {allowed_text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn an_item_name_gives_its_module_and_type_names() {
        let names = Names::of_item("order_payment2").expect("valid");
        assert_eq!(names.snake, "order_payment2");
        assert_eq!(names.camel, "OrderPayment2");
    }

    #[test]
    fn a_package_name_may_hold_dashes_and_gives_a_crate_name() {
        let names = Names::of_package("my-shop").expect("valid");
        assert_eq!(names.snake, "my_shop");
    }

    #[test]
    fn names_that_would_not_compile_are_refused_saying_why() {
        let cases = [
            ("", "1 to 64 bytes"),
            ("Order", "lowercase letter"),
            ("order-payment", "'-'"),
            ("order__payment", "snake_case"),
            ("type", "keyword"),
            ("workflow", "already imports"),
            ("a\u{e9}", "'\u{e9}'"),
        ];
        for (name, reason) in cases {
            let error = Names::of_item(name).expect_err(name).to_string();
            assert!(error.contains(reason), "{name:?}: {error}");
        }
        let long = "a".repeat(65);
        assert!(Names::of_item(&long).is_err());
        assert!(Names::of_package("retrace").is_err());
        assert!(Names::of_package("serde-json").is_err());
    }
}
