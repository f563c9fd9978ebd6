"""Kubernetes manifests rendered from recipes: `bigtrain k8s render`."""
