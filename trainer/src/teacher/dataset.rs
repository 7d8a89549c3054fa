//! The `dataset` teacher: rationales the data already holds (e-SNLI's and CoS-E's human
//! explanations, ComVE's right reasons and its human-written "confusing reasons" for the wrong
//! label). It writes nothing new; it makes human rationales flow through the same pipeline.

use super::{RationaleRequest, Teacher, TeacherError};

/// Returns the first rationale filed under the requested label, or [`TeacherError::NotInData`].
#[derive(Debug, Default, Clone, Copy)]
pub struct DatasetTeacher;

impl Teacher for DatasetTeacher {
    fn source(&self) -> String {
        "dataset".into()
    }

    fn rationalize(&self, batch: &[RationaleRequest<'_>]) -> Vec<Result<String, TeacherError>> {
        batch
            .iter()
            .map(|r| {
                r.example
                    .rationales
                    .get(r.label)
                    .and_then(|v| v.first())
                    .map(|x| x.text.clone())
                    .ok_or_else(|| TeacherError::NotInData(r.label.to_string()))
            })
            .collect()
    }
}
