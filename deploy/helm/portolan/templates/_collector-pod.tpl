{{/*
The pod template of the collector and of the evaluator (the same binary):
(dict "root" $ "component" "collector" "values" .Values.collector "configMap" NAME "rules" BOOL).
*/}}
{{- define "portolan.collector.podTemplate" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $name := include (printf "portolan.%s.fullname" .component) $root -}}
{{- if and $root.Values.enrollment.enabled (not $root.Values.enrollment.signerSecret) -}}
{{- fail "enrollment.enabled: set enrollment.signerSecret to the Secret holding the signer (`portolan pki issue-signer`) as tls.crt and tls.key" -}}
{{- end -}}
metadata:
  labels:
    {{- include "portolan.componentLabels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/" .component "-configmap.yaml") $root | sha256sum }}
    checksum/clickhouse: {{ include (print $root.Template.BasePath "/clickhouse-secret.yaml") $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ default $name $v.serviceAccount.name }}
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    # Group of the mounted Secret files (mode 0440).
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "portolan.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["portolan-collector", "--config", "/etc/portolan/config/collector.toml"]
      env:
        {{- include "portolan.clickhouse.env" $root | nindent 8 }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ $root.Values.collector.port }}
          protocol: TCP
        # Metrics, /healthz and /readyz (plain HTTP): the gRPC health service sits
        # behind mutual TLS, and the kubelet has no client certificate to present.
        - name: metrics
          containerPort: {{ $root.Values.metrics.port }}
          protocol: TCP
      {{- include "portolan.probes" $root | nindent 6 }}
      securityContext:
        {{- include "portolan.restrictedSecurityContext" $root | nindent 8 }}
      {{- with $v.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/portolan/config
          readOnly: true
        - name: tls
          mountPath: /etc/portolan/tls
          readOnly: true
        {{- if $root.Values.collector.revocation.configMap }}
        # A directory, never subPath: the kubelet's updates reach the file, which the
        # collector re-reads within a second of a change.
        - name: revocation
          mountPath: {{ include "portolan.collector.revocationDir" $root }}
          readOnly: true
        {{- end }}
        {{- if include "portolan.collector.crlEnabled" $root }}
        # A directory too: an updated CRL reaches the pods and applies within a second.
        - name: crl
          mountPath: {{ include "portolan.collector.crlDir" $root }}
          readOnly: true
        {{- end }}
        {{- if .rules }}
        - name: rules
          mountPath: /etc/portolan/rules
          readOnly: true
        {{- end }}
        {{- if $root.Values.clickhouse.tls.caSecret }}
        - name: clickhouse-ca
          mountPath: {{ include "portolan.clickhouse.tlsDir" $root }}/ca
          readOnly: true
        {{- end }}
        {{- if $root.Values.clickhouse.tls.clientSecret }}
        - name: clickhouse-client
          mountPath: {{ include "portolan.clickhouse.tlsDir" $root }}/client
          readOnly: true
        {{- end }}
        {{- if and (eq .component "collector") $root.Values.enrollment.enabled }}
        # The enrollment signer: whoever reads its key can make agent certificates.
        - name: signer
          mountPath: /etc/portolan/signer
          readOnly: true
        {{- end }}
        - name: state
          mountPath: /var/lib/portolan-collector
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ $name }}
    - name: tls
      secret:
        secretName: {{ include "portolan.collector.tlsSecret" $root }}
        defaultMode: 0440
    {{- with $root.Values.collector.revocation.configMap }}
    - name: revocation
      configMap:
        name: {{ . }}
    {{- end }}
    {{- with $root.Values.collector.crl.configMap }}
    - name: crl
      configMap:
        name: {{ . }}
    {{- end }}
    {{- with $root.Values.collector.crl.secret }}
    - name: crl
      secret:
        secretName: {{ . }}
    {{- end }}
    {{- if .rules }}
    - name: rules
      configMap:
        name: {{ $name }}-rules
    {{- end }}
    {{- with $root.Values.clickhouse.tls.caSecret }}
    - name: clickhouse-ca
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- with $root.Values.clickhouse.tls.clientSecret }}
    - name: clickhouse-client
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- if and (eq .component "collector") $root.Values.enrollment.enabled }}
    - name: signer
      secret:
        secretName: {{ $root.Values.enrollment.signerSecret }}
        defaultMode: 0440
    {{- end }}
    # state_dir: only the managed ClickHouse writes there, which the chart does not use.
    - name: state
      emptyDir:
        sizeLimit: 64Mi
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
