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
{{/* The name of every object the chart creates (cluster-scoped ones included). */}}
{{- define "csop.fullname" -}}
cluster-security-operator
{{- end }}
