//! Search attributes and memo as workflow code sets them: each upsert is a
//! command (`UpsertWorkflowSearchAttributes`, `ModifyWorkflowProperties`),
//! matched on replay like any other; and `patched`'s `TemporalChangeVersion`.

use serde_json::Value;

use super::command::Command;
use super::context::WorkflowContext;
use crate::visibility::{
    CHANGE_VERSION, Memo, SearchAttributeError, SearchAttributes, SearchValue, Setter, merge_memo,
    validate_merge,
};

/// The pseudo marker name under which the executor hands a replayed task's
/// search attribute upserts to `patched` (details: the attributes set).
pub(crate) const UPSERT_LOOKAHEAD: &str = "UpsertWorkflowSearchAttributes";

/// The run's attributes and memo as its code has set them so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct VisibilityCore {
    /// The start's attributes with every upsert since merged in.
    pub(crate) search_attributes: SearchAttributes,
    /// The start's memo with every modification since.
    pub(crate) memo: Memo,
    /// The patches `patched` took, in order: `TemporalChangeVersion`'s value.
    pub(crate) change_versions: Vec<String>,
}

impl VisibilityCore {
    /// The `TemporalChangeVersion` upsert for a patch taken for the first
    /// time, or `None` when replaying a task that recorded none for it (a
    /// history from before `patched` upserted, kept replaying).
    pub(crate) fn change_version_upsert(
        &mut self,
        patch_id: &str,
        lookahead: Option<&[(String, Value)]>,
    ) -> Option<Command> {
        assert!(!self.change_versions.iter().any(|p| p == patch_id));
        self.change_versions.push(patch_id.to_string());
        if let Some(markers) = lookahead {
            let recorded = markers.iter().any(|(name, details)| {
                name == UPSERT_LOOKAHEAD
                    && details
                        .get(CHANGE_VERSION)
                        .and_then(|v| v.get("KeywordList"))
                        .and_then(Value::as_array)
                        .is_some_and(|ids| ids.iter().any(|id| id == patch_id))
            });
            if !recorded {
                return None;
            }
        }
        let value = SearchValue::KeywordList(self.change_versions.clone());
        self.search_attributes
            .insert(CHANGE_VERSION.to_string(), value.clone());
        let search_attributes = SearchAttributes::from([(CHANGE_VERSION.to_string(), value)]);
        Some(Command::UpsertWorkflowSearchAttributes { search_attributes })
    }
}

impl WorkflowContext {
    /// Sets search attributes of this run (others keep their values), as
    /// Temporal's `upsert_search_attributes`: recorded in the history as an
    /// `UpsertWorkflowSearchAttributes` event, indexed for list queries.
    /// Refused (nothing recorded) if a name is invalid or reserved, a value
    /// does not fit its kind, or the run would hold too many or too large.
    pub fn upsert_search_attributes(
        &self,
        search_attributes: SearchAttributes,
    ) -> Result<(), SearchAttributeError> {
        let mut core = self.lock();
        let current = &core.visibility.search_attributes;
        let merged = validate_merge(current, &search_attributes, Setter::User)?;
        core.visibility.search_attributes = merged;
        core.commands
            .push(Command::UpsertWorkflowSearchAttributes { search_attributes });
        Ok(())
    }

    /// Sets memo keys of this run (a `null` value removes its key), recorded
    /// as a `WorkflowPropertiesModified` event. Refused if the memo would be
    /// too large.
    pub fn upsert_memo(&self, upserted_memo: Memo) -> Result<(), SearchAttributeError> {
        let mut core = self.lock();
        let merged = merge_memo(&core.visibility.memo, &upserted_memo)?;
        core.visibility.memo = merged;
        core.commands
            .push(Command::ModifyWorkflowProperties { upserted_memo });
        Ok(())
    }

    /// The run's search attributes as its code has set them so far.
    pub fn search_attributes(&self) -> SearchAttributes {
        self.lock().visibility.search_attributes.clone()
    }

    /// The run's memo as its code has set it so far.
    pub fn memo(&self) -> Memo {
        self.lock().visibility.memo.clone()
    }
}

/// A refused upsert fails the workflow with an application failure of type
/// `SearchAttributeError` (so workflow code can use `?`).
impl From<SearchAttributeError> for super::WorkflowError {
    fn from(error: SearchAttributeError) -> Self {
        super::WorkflowError::application("SearchAttributeError", error.to_string())
    }
}
