"""Server reflection under both of its names: ``grpc.reflection.v1``, which current clients (grpcurl, Postman,
grpcui) ask first, and ``grpc.reflection.v1alpha``, which older ones ask and grpcio-reflection ships.

The two protocols differ only in their package's name: the same messages with the same field numbers. So v1's
method is served by grpcio-reflection's own servicer, its messages read and written by v1alpha's classes, and v1's
file, v1alpha's with the package renamed, is in the pool so that a client can describe v1 too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from krt_runner.entrypoint.service import add_file

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1ALPHA_PACKAGE = reflection_pb2.DESCRIPTOR.package


def serve_reflection(server: grpc.aio.Server, services: Iterable[str], pool: descriptor_pool.DescriptorPool) -> None:
    """Serve reflection of ``services`` (and of reflection itself) from ``pool``, whose files describe them."""
    add_file(pool, reflection_pb2.DESCRIPTOR)
    _add_v1_file(pool)
    servicer = reflection.aio.ReflectionServicer((*services, reflection.SERVICE_NAME, V1_SERVICE_NAME),
                                                 pool=_MethodsFound(pool))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_registered_method_handlers(V1_SERVICE_NAME, {"ServerReflectionInfo": v1_method})


class _MethodsFound:
    """``pool`` for the reflection servicer, with the file of an rpc's full name (``pkg.Entrypoint.Greet``) found
    too: ``grpcurl describe pkg.Entrypoint.Greet`` asks for it, and upb's pool finds messages, enums and services,
    not methods (grpc/grpc#34743)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:  # the pool's own method name
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return service.file


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    v1 = FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1)
    v1.name = "grpc/reflection/v1/reflection.proto"
    v1.package = "grpc.reflection.v1"
    v1.options.java_package = "io.grpc.reflection.v1"
    v1.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    v1.options.ClearField("deprecated")
    for message in v1.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = _renamed(field.type_name)
    for method in v1.service[0].method:
        method.input_type, method.output_type = _renamed(method.input_type), _renamed(method.output_type)
    try:
        pool.FindFileByName(v1.name)
    except KeyError:
        pool.Add(v1)


def _renamed(type_name: str) -> str:
    return type_name.replace(f".{_V1ALPHA_PACKAGE}.", ".grpc.reflection.v1.")
