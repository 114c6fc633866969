//! StreamingJob manifests compiled into DStreams.
