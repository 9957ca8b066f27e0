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
