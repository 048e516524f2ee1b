{{- define "fedge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fedge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "fedge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "fedge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "fedge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fedge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fedge.secretName" -}}
{{- default (include "fedge.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* true when the chart renders its own Secret (some secret value is set and no existingSecret) */}}
{{- define "fedge.renderSecret" -}}
{{- if and (not .Values.existingSecret) (or .Values.database.url .Values.storage.s3.accessKey .Values.storage.s3.secretKey .Values.chain.privateKey .Values.adminToken .Values.metrics.token) -}}
true
{{- end -}}
{{- end -}}

{{- define "fedge.useSecret" -}}
{{- if or .Values.existingSecret (include "fedge.renderSecret" .) -}}
true
{{- end -}}
{{- end -}}
