//! Verbs backend (feature `verbs`): placeholder until the backend lands.
