"""The admission webhook: AdmissionReview in, decisions and JSON patches out."""
