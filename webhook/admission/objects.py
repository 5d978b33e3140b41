"""The parts of a Kubernetes object the webhook reads, decoded straight from the request.

Only these fields become Python objects; the rest of the object is skipped while
decoding, and decoding is most of what answering a Pod from memory costs. Field
names are the API's own, so a path of field names (pods.POD_SPEC_PATHS) is both
the way down to a pod spec and the JSON pointer to it.

None is tracked by the garbage collector (gc=False): a tree decoded from JSON holds no
cycle, and untracked, the dozens of objects each review decodes neither trigger nor
lengthen collections, which at 64 reviews in flight cost the hot path a tenth of its time.
"""

from __future__ import annotations

from msgspec import Struct, field


class Container(Struct, gc=False):
    name: str | None = None
    image: str | None = None


class LocalObjectReference(Struct, gc=False):
    name: str | None = None


class TriggerSource(Struct, gc=False):
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None


class ImageChangeParams(Struct, gc=False):
    containerNames: list[str] | None = None
    from_: TriggerSource | None = field(default=None, name="from")


class Trigger(Struct, gc=False):
    """A DeploymentConfig's trigger: ImageChange ones name the containers they fill."""

    type: str | None = None
    imageChangeParams: ImageChangeParams | None = None


class Spec(Struct, gc=False):
    """Every spec on the way to a pod spec: a pod spec's container lists and pull
    credentials, a workload's pod template, a CronJob's job template, a DeploymentConfig's
    triggers. Each kind uses its own part of it."""

    containers: list[Container] | None = None
    initContainers: list[Container] | None = None
    ephemeralContainers: list[Container] | None = None
    imagePullSecrets: list[LocalObjectReference] | None = None
    serviceAccountName: str | None = None
    serviceAccount: str | None = None  # the deprecated alias, still honoured by the API server
    template: Template | None = None
    jobTemplate: Template | None = None
    triggers: list[Trigger] | None = None


class Template(Struct, gc=False):
    """A PodTemplateSpec or a JobTemplateSpec: its spec, and (of a pod template) the
    annotations OpenShift's image policy reads."""

    metadata: ObjectMeta | None = None
    spec: Spec | None = None


class OwnerReference(Struct, gc=False):
    apiVersion: str | None = None
    kind: str | None = None
    name: str | None = None
    uid: str | None = None
    controller: bool | None = None


class ObjectMeta(Struct, gc=False):
    name: str | None = None
    generateName: str | None = None
    uid: str | None = None
    annotations: dict[str, str] | None = None
    ownerReferences: list[OwnerReference] | None = None


class KubeObject(Struct, gc=False):
    metadata: ObjectMeta | None = None
    spec: Spec | None = None
    template: Template | None = None  # a PodTemplate's
