pub mod flow;
pub mod reconciler;
pub mod view;
