"""The API's one way of reading parameters and bodies: a serializer per parameter set,
read by ``parsed``; ids bounded to what their columns hold; page numbers alike. (Apart
from cases.api so that DRF's settings can import the pagination class early.)"""

from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination

from .forms import MAX_ID


def parsed(serializer_class, data) -> dict:
    """``data`` (query parameters or a body) read by ``serializer_class``: anything it
    refuses is a 400 naming each bad field and why."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def id_field(**kwargs) -> serializers.IntegerField:
    """An object id: a whole number a 64-bit id column can hold."""
    return serializers.IntegerField(min_value=1, max_value=MAX_ID, **kwargs)


class Pagination(PageNumberPagination):
    """DRF's page numbers, with a page that is no number a 400 like any other parameter
    (a page past the end stays DRF's 404)."""

    def get_page_number(self, request, paginator):
        number = super().get_page_number(request, paginator)  # "last" is a number by now
        try:
            return id_field().run_validation(number)
        except ValidationError as error:
            raise ValidationError({self.page_query_param: error.detail}) from None
