"""Server reflection under both ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only v1alpha. The v1 protocol has the same messages
under another package name, so the v1 service reuses the v1alpha servicer and
serializers (identical on the wire), and a renamed copy of the reflection
descriptor is registered so that v1 can itself be described.

Each server describes only what it serves: its reflection reads a pool of its
own services' files and their imports, not the process-wide default pool (the
frontend imports ``licensing.control.v1`` to call the backend, and must not
describe it to the public).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old) :]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old) :]
            method.output_type = new + method.output_type[len(old) :]
    pool.Add(proto)


def served_pool(service_names: Iterable[str]) -> descriptor_pool.DescriptorPool:
    """A pool of the files defining ``service_names`` and what they import, nothing else.

    Plus the error details every server sends (``google.rpc.ErrorInfo``, ``RetryInfo``
    in ``grpc-status-details-bin``), so that tools such as grpcurl can decode them.
    """
    default = descriptor_pool.Default()
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: descriptor.FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for name in service_names:
        add(default.FindServiceByName(name).file)
    add(status_pb2.DESCRIPTOR)
    add(error_details_pb2.DESCRIPTOR)
    return pool


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    _register_v1_descriptor()
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    servicer = ReflectionServicer(names, pool=served_pool(names))
    for service in (V1ALPHA_SERVICE, V1_SERVICE):
        handler = grpc.method_handlers_generic_handler(
            service,
            {
                "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                    servicer.ServerReflectionInfo,
                    request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                    response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
