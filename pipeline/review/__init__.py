"""Medical sign-off: a clinician's review of one version of an article."""
