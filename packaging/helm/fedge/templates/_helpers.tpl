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

{{/* true with more than one replica: a StatefulSet of replicas (docs/scale.md) instead of the Deployment.
     Refuses, at render time, every backend that one process keeps to itself. */}}
{{- define "fedge.replicated" -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- if not (or .Values.existingSecret .Values.database.url) -}}
{{- fail "replicaCount > 1 needs a shared PostgreSQL: set database.url (or existingSecret with database-url); SQLite is one process's" -}}
{{- end -}}
{{- if and .Values.database.url (not (hasPrefix "postgresql" .Values.database.url)) -}}
{{- fail "replicaCount > 1 needs database.url to be PostgreSQL (postgresql+psycopg://...)" -}}
{{- end -}}
{{- if ne .Values.storage.backend "s3" -}}
{{- fail "replicaCount > 1 needs storage.backend=s3: the local store is one disk's" -}}
{{- end -}}
{{- if ne .Values.chain.backend "jsonrpc" -}}
{{- fail "replicaCount > 1 needs chain.backend=jsonrpc: the in-process EVM is one process's" -}}
{{- end -}}
{{- if eq .Values.mqtt.backend "embedded" -}}
{{- fail "replicaCount > 1 needs mqtt.backend=mosquitto (or none): the embedded broker is one process's" -}}
{{- end -}}
{{- if .Values.persistence.existingClaim -}}
{{- fail "replicaCount > 1: persistence.existingClaim is one claim; each replica gets its own from persistence.* (volumeClaimTemplates)" -}}
{{- end -}}
{{- if not .Values.replicas.sharedClaim -}}
{{- fail "replicaCount > 1 needs replicas.sharedClaim: a ReadWriteMany claim holding <dataDir>/fleet (device CA) and <dataDir>/chain (chain key, registry address) for every replica" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}
