pub mod flow;
pub mod reconciler;
