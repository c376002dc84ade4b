"""The fault soak (issue 10): random operations and faults against the running stack, then
an invariant checker reading the truth from the sandboxes, the store and Temporal."""
