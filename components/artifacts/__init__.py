"""What the loop makes and where it keeps it: the object store and its manifests, the layout of every
store path, which code made an artifact, a stage's work in shards, the catalog, and MLflow's records.
Nothing here starts a process: that is components/runtime/."""
