//! TODO(helper): commitlog
