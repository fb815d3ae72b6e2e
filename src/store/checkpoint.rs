//! TODO(helper): checkpoint
