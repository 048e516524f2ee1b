{{/* The controller pod (metadata + spec), shared by the one-replica Deployment and the replicas'
     StatefulSet. In replica mode the data dir is the StatefulSet's per-pod claim and the shared claim
     holds <dataDir>/fleet and <dataDir>/chain (docs/scale.md). */}}
{{- define "fedge.podTemplate" -}}
{{- $secret := include "fedge.secretName" . -}}
{{- $useSecret := include "fedge.useSecret" . -}}
metadata:
  labels:
    {{- include "fedge.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := deepCopy .Values.podAnnotations }}
  {{- if include "fedge.renderSecret" . }}
  {{- $_ := set $annotations "checksum/secret" (include (print $.Template.BasePath "/secret.yaml") . | sha256sum) }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "fedge.serviceAccountName" . }}
  automountServiceAccountToken: {{ eq .Values.jobs.runner "kubernetes" }}
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: controller
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["fedge-controller", "serve"]
      args:
        - --log-level={{ .Values.logLevel }}
        {{- with .Values.logFormat }}
        - --log-format={{ . }}
        {{- end }}
        {{- if .Values.tls.existingSecret }}
        - --tls-cert=/etc/fedge/tls/tls.crt
        - --tls-key=/etc/fedge/tls/tls.key
        {{- end }}
        {{- with .Values.forwardedAllowIps }}
        - --forwarded-allow-ips={{ . }}
        {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      ports:
        - name: http
          containerPort: 8400
          protocol: TCP
        {{- if eq .Values.mqtt.backend "embedded" }}
        - name: mqtt
          containerPort: {{ .Values.mqtt.port }}
          protocol: TCP
        {{- end }}
        {{- if eq .Values.fl.engine "flower" }}
        - name: fl-fleet
          containerPort: {{ .Values.fl.fleetPort }}
          protocol: TCP
        {{- end }}
      env:
        {{- if include "fedge.replicated" . }}
        # the replica id is the pod's name (<release>-fedge-0, -1, ...): stable across restarts, unique
        - name: FEDGE_REPLICA_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        # the root filesystem is read-only: caches of libraries go to the pod's /tmp
        - name: HOME
          value: /tmp
        - name: FEDGE_DATA_DIR
          value: {{ .Values.dataDir | quote }}
        - name: FEDGE_HOST
          value: "0.0.0.0"
        - name: FEDGE_PORT
          value: "8400"
        {{- with .Values.publicUrl }}
        - name: FEDGE_PUBLIC_URL
          value: {{ . | quote }}
        {{- end }}
        - name: FEDGE_STORAGE_BACKEND
          value: {{ .Values.storage.backend | quote }}
        {{- if eq .Values.storage.backend "s3" }}
        - name: FEDGE_S3_ENDPOINT
          value: {{ required "storage.s3.endpoint is required for storage.backend=s3" .Values.storage.s3.endpoint | quote }}
        - name: FEDGE_S3_SECURE
          value: {{ .Values.storage.s3.secure | quote }}
        - name: FEDGE_S3_REGION
          value: {{ .Values.storage.s3.region | quote }}
        {{- with .Values.storage.s3.bucketPrefix }}
        - name: FEDGE_BUCKET_PREFIX
          value: {{ . | quote }}
        {{- end }}
        {{- end }}
        - name: FEDGE_CHAIN_BACKEND
          value: {{ .Values.chain.backend | quote }}
        {{- if eq .Values.chain.backend "jsonrpc" }}
        - name: FEDGE_CHAIN_RPC_URL
          value: {{ required "chain.rpcUrl is required for chain.backend=jsonrpc" .Values.chain.rpcUrl | quote }}
        {{- end }}
        {{- with .Values.chain.chainId }}
        - name: FEDGE_CHAIN_ID
          value: {{ . | quote }}
        {{- end }}
        - name: FEDGE_BROKER_BACKEND
          value: {{ .Values.mqtt.backend | quote }}
        {{- if ne .Values.mqtt.backend "none" }}
        - name: FEDGE_BROKER_HOST
          {{- if eq .Values.mqtt.backend "embedded" }}
          value: {{ default "0.0.0.0" .Values.mqtt.host | quote }}
          {{- else }}
          value: {{ required "mqtt.host is required for mqtt.backend=mosquitto" .Values.mqtt.host | quote }}
          {{- end }}
        - name: FEDGE_BROKER_PORT
          value: {{ .Values.mqtt.port | quote }}
        {{- with .Values.mqtt.url }}
        - name: FEDGE_BROKER_URL
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.mqtt.mosquittoDir }}
        - name: FEDGE_MOSQUITTO_DIR
          value: {{ . | quote }}
        {{- end }}
        {{- end }}
        - name: FEDGE_FL_ENGINE
          value: {{ .Values.fl.engine | quote }}
        {{- if eq .Values.fl.engine "flower" }}
        - name: FEDGE_FL_FLEET_HOST
          value: "0.0.0.0"
        - name: FEDGE_FL_FLEET_PORT
          value: {{ .Values.fl.fleetPort | quote }}
        {{- if .Values.fl.fleetPublicHost }}
        # with replicas, "$(FEDGE_REPLICA_ID)" in it is each pod's name (the kubelet expands it)
        - name: FEDGE_FL_FLEET_PUBLIC_HOST
          value: {{ .Values.fl.fleetPublicHost | quote }}
        {{- else if include "fedge.replicated" . }}
        # an FL job runs on the replica that claimed it: devices reach that pod's Fleet front by its own name
        - name: FEDGE_FL_FLEET_PUBLIC_HOST
          value: {{ printf "$(FEDGE_REPLICA_ID).%s-replicas.%s.svc.cluster.local" (include "fedge.fullname" .) .Release.Namespace | quote }}
        {{- end }}
        {{- with .Values.fl.superlinkAddress }}
        - name: FEDGE_FL_SUPERLINK_ADDRESS
          value: {{ . | quote }}
        {{- end }}
        {{- end }}
        - name: FEDGE_JOB_RUNNER
          value: {{ .Values.jobs.runner | quote }}
        - name: FEDGE_JOB_WORKERS
          value: {{ .Values.jobs.workers | quote }}
        - name: FEDGE_JOB_TIMEOUT_SECONDS
          value: {{ .Values.jobs.timeoutSeconds | quote }}
        {{- if eq .Values.jobs.runner "kubernetes" }}
        - name: FEDGE_K8S_NAMESPACE
          value: {{ .Values.jobs.namespace | quote }}
        {{- with .Values.jobs.image }}
        - name: FEDGE_K8S_IMAGE
          value: {{ . | quote }}
        {{- end }}
        - name: FEDGE_K8S_JOB_PVC
          value: {{ required "jobs.pvc is required for jobs.runner=kubernetes (an RWX claim, see packaging/k8s/pvc.yaml)" .Values.jobs.pvc | quote }}
        {{- end }}
        {{- with .Values.oidc.issuer }}
        - name: FEDGE_OIDC_ISSUER
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.oidc.audience }}
        - name: FEDGE_OIDC_AUDIENCE
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.oidc.roleClaim }}
        - name: FEDGE_OIDC_ROLE_CLAIM
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.oidc.defaultRole }}
        - name: FEDGE_OIDC_DEFAULT_ROLE
          value: {{ . | quote }}
        {{- end }}
        {{- if $useSecret }}
        {{- range $env, $key := dict "FEDGE_DATABASE_URL" "database-url" "FEDGE_S3_ACCESS_KEY" "s3-access-key" "FEDGE_S3_SECRET_KEY" "s3-secret-key" "FEDGE_CHAIN_PRIVATE_KEY" "chain-private-key" "FEDGE_ADMIN_TOKEN" "admin-token" "FEDGE_METRICS_TOKEN" "metrics-token" }}
        - name: {{ $env }}
          valueFrom:
            secretKeyRef:
              name: {{ $secret }}
              key: {{ $key }}
              optional: true
        {{- end }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      livenessProbe:
        httpGet:
          path: {{ .Values.probes.liveness.path }}
          port: http
          {{- if .Values.tls.existingSecret }}
          scheme: HTTPS
          {{- end }}
        initialDelaySeconds: {{ .Values.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: {{ .Values.probes.readiness.path }}
          port: http
          {{- if .Values.tls.existingSecret }}
          scheme: HTTPS
          {{- end }}
        initialDelaySeconds: {{ .Values.probes.readiness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      startupProbe:
        httpGet:
          path: {{ .Values.probes.startup.path }}
          port: http
          {{- if .Values.tls.existingSecret }}
          scheme: HTTPS
          {{- end }}
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: {{ .Values.dataDir }}
        - name: tmp
          mountPath: /tmp
        {{- if include "fedge.replicated" . }}
        # the keys every replica shares: the device CA and the chain key + registry address
        - name: shared
          mountPath: {{ printf "%s/fleet" (trimSuffix "/" .Values.dataDir) }}
          subPath: fleet
        - name: shared
          mountPath: {{ printf "%s/chain" (trimSuffix "/" .Values.dataDir) }}
          subPath: chain
        {{- end }}
        {{- if eq .Values.jobs.runner "kubernetes" }}
        # job dirs: the same RWX claim the training pods mount (PvcJobDir, mount root <data_dir>/jobs)
        - name: jobs
          mountPath: {{ printf "%s/jobs" (trimSuffix "/" .Values.dataDir) }}
        {{- end }}
        {{- if .Values.tls.existingSecret }}
        - name: tls
          mountPath: /etc/fedge/tls
          readOnly: true
        {{- end }}
  volumes:
    {{- if include "fedge.replicated" . }}
    {{- if not .Values.persistence.enabled }}
    - name: data
      emptyDir: {}
    {{- end }}
    - name: shared
      persistentVolumeClaim:
        claimName: {{ .Values.replicas.sharedClaim }}
    {{- else }}
    - name: data
      {{- if .Values.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ default (printf "%s-data" (include "fedge.fullname" .)) .Values.persistence.existingClaim }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
    - name: tmp
      emptyDir: {}
    {{- if eq .Values.jobs.runner "kubernetes" }}
    - name: jobs
      persistentVolumeClaim:
        claimName: {{ .Values.jobs.pvc }}
    {{- end }}
    {{- with .Values.tls.existingSecret }}
    - name: tls
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
