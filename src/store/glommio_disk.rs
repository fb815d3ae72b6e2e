//! TODO(helper): glommio_disk
