import public_input_pb2 as _public_input_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelOutput(_message.Message):
    __slots__ = ("request", "price_category")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PRICE_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    request: _public_input_pb2.Request
    price_category: int
    def __init__(self, request: _Optional[_Union[_public_input_pb2.Request, _Mapping]] = ..., price_category: _Optional[int] = ...) -> None: ...
