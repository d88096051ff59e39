from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("room_type", "bedrooms", "bathrooms", "accommodates", "beds", "neighbourhood", "latitude", "longitude", "tv", "elevator", "internet")
    ROOM_TYPE_FIELD_NUMBER: _ClassVar[int]
    BEDROOMS_FIELD_NUMBER: _ClassVar[int]
    BATHROOMS_FIELD_NUMBER: _ClassVar[int]
    ACCOMMODATES_FIELD_NUMBER: _ClassVar[int]
    BEDS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURHOOD_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    TV_FIELD_NUMBER: _ClassVar[int]
    ELEVATOR_FIELD_NUMBER: _ClassVar[int]
    INTERNET_FIELD_NUMBER: _ClassVar[int]
    room_type: str
    bedrooms: int
    bathrooms: float
    accommodates: int
    beds: int
    neighbourhood: str
    latitude: float
    longitude: float
    tv: int
    elevator: int
    internet: int
    def __init__(self, room_type: _Optional[str] = ..., bedrooms: _Optional[int] = ..., bathrooms: _Optional[float] = ..., accommodates: _Optional[int] = ..., beds: _Optional[int] = ..., neighbourhood: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., tv: _Optional[int] = ..., elevator: _Optional[int] = ..., internet: _Optional[int] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("success", "message", "market_price", "category")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MARKET_PRICE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    market_price: str
    category: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., market_price: _Optional[str] = ..., category: _Optional[str] = ...) -> None: ...
