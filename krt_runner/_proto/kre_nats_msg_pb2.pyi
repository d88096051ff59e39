from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KreNatsMessage(_message.Message):
    __slots__ = ("tracking_id", "tracking", "reply", "payload", "error", "replied")
    class Tracking(_message.Message):
        __slots__ = ("node_name", "start", "end")
        NODE_NAME_FIELD_NUMBER: _ClassVar[int]
        START_FIELD_NUMBER: _ClassVar[int]
        END_FIELD_NUMBER: _ClassVar[int]
        node_name: str
        start: str
        end: str
        def __init__(self, node_name: _Optional[str] = ..., start: _Optional[str] = ..., end: _Optional[str] = ...) -> None: ...
    TRACKING_ID_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLIED_FIELD_NUMBER: _ClassVar[int]
    tracking_id: str
    tracking: _containers.RepeatedCompositeFieldContainer[KreNatsMessage.Tracking]
    reply: str
    payload: _any_pb2.Any
    error: str
    replied: bool
    def __init__(self, tracking_id: _Optional[str] = ..., tracking: _Optional[_Iterable[_Union[KreNatsMessage.Tracking, _Mapping]]] = ..., reply: _Optional[str] = ..., payload: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., error: _Optional[str] = ..., replied: _Optional[bool] = ...) -> None: ...
