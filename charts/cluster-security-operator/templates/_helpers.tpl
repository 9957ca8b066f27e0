{{/* Labels every object of the release carries. */}}
{{- define "csop.labels" -}}
app.kubernetes.io/name: cluster-security-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What the Services and the Deployment select on. */}}
{{- define "csop.selector" -}}
app.kubernetes.io/name: cluster-security-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Whether the KmsKeyVaultMode controller runs: "true" or "". controllers.kmsKeyVaultMode null
(the default) means on in a cluster-wide install and off with watchNamespaces, because
re-encryption rewrites every Secret of the cluster and needs a ClusterRole on Secrets, which a
scoped install must not hold; an explicit true or false wins. rbac.yaml (the KMS ClusterRole) and
deployment.yaml (--controllers) both decide by this. */}}
{{- define "csop.kmsKeyVaultMode" -}}
{{- $kms := .Values.controllers.kmsKeyVaultMode -}}
{{- if kindIs "invalid" $kms -}}
{{- $kms = not .Values.watchNamespaces -}}
{{- end -}}
{{- if $kms }}true{{ end -}}
{{- end }}
{{/* The name of every object the chart creates (cluster-scoped ones included), and the prefix
of the others: fullnameOverride, else nameOverride, else the chart's name. Not the release name:
an upgrade of an existing install keeps every name (its Lease, its webhook Secret). 63
characters at most, as Helm charts do (the schema allows 55, so that -webhook fits a Service). */}}
{{- define "csop.fullname" -}}
{{- .Values.fullnameOverride | default .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* Whether the names differ from the operator's flag defaults (cluster-security-operator…):
then deployment.yaml passes them (--webhook-config, --webhook-service, --webhook-secret,
--leader-elect-lease). */}}
{{- define "csop.renamed" -}}
{{- if ne (include "csop.fullname" .) "cluster-security-operator" }}true{{ end -}}
{{- end }}
