//! Log capture and follow. Each agent has one [`LogHub`]: it appends the
//! agent's output to `log_dir/<id>.log`, rotates it by size, announces every
//! written chunk to live followers, and reads back from any cursor.
//!
//! A cursor is an offset in the agent's whole log history: it keeps growing
//! across rotations (the offset where the current file starts is kept in the
//! store), so a follower that resumes from a cursor gets exactly the lines
//! after it, whichever file they are in now.

pub mod capture;
pub mod follow;
mod hub;
pub mod lines;
mod writer;

pub use follow::{Follower, Item};
pub use hub::{Drops, LogHub};
pub use writer::flush;
