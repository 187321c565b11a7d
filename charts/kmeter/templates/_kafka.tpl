{{/* Kafka connection as KMETER_KAFKA_* variables (kmeter.kafka.admin.KafkaSettings). */}}
{{- define "kmeter.kafka.env" -}}
- name: KMETER_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrapServers is required: the Kafka bootstrap servers, host:port" .Values.kafka.bootstrapServers | quote }}
- name: KMETER_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if and (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL")) .Values.kafka.tls.caSecret.name }}
- name: KMETER_KAFKA_CA_FILE
  value: /etc/kmeter/kafka-ca/{{ .Values.kafka.tls.caSecret.key }}
{{- end }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: KMETER_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: KMETER_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.secret.name is required with a SASL_* securityProtocol" .Values.kafka.sasl.secret.name }}
      key: {{ .Values.kafka.sasl.secret.usernameKey }}
- name: KMETER_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.secret.name }}
      key: {{ .Values.kafka.sasl.secret.passwordKey }}
{{- end }}
{{- end -}}

{{/* What the operator writes into tenant namespaces for workers and sidecars. */}}
{{- define "kmeter.kafka.tenantEnv" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: KMETER_KAFKA_TENANT_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.tenantSecret.name is required with a SASL_* securityProtocol: the credentials the operator copies into every metered namespace for workers and sidecars (docs/install.md); name the operator's own Secret only if you accept that tenants can read them" .Values.kafka.sasl.tenantSecret.name }}
      key: {{ .Values.kafka.sasl.tenantSecret.usernameKey }}
- name: KMETER_KAFKA_TENANT_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.tenantSecret.name }}
      key: {{ .Values.kafka.sasl.tenantSecret.passwordKey }}
{{- end }}
{{- end -}}

{{/* How injected sidecars connect; their credentials come from the tenant Secret. */}}
{{- define "kmeter.kafka.sidecarEnv" -}}
- name: KMETER_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
- name: KMETER_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
{{- end }}
{{- end -}}

{{/* Without a CA Secret, the brokers are verified against the image's system CAs. */}}
{{- define "kmeter.kafka.volumes" -}}
{{- if and (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL")) .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name }}
{{- end }}
{{- end -}}

{{- define "kmeter.kafka.volumeMounts" -}}
{{- if and (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL")) .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/kmeter/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "kmeter.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "kmeter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kmeter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
