"""Every form and query string of the pages is parsed by a form (here and in review.forms;
the API's by the serializers in the api modules, with the same bounds): garbage is a 400
that names the field and says why, never a 500 and never a silent cut. The helpers here
turn a refused form into that answer."""

from datetime import date

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import JsonResponse

MAX_ID = 2**63 - 1  # ids are 64-bit (BigAutoField); a bigger number is no id, not a crash
EARLIEST_DATE, LATEST_DATE = date(1900, 1, 1), date(2999, 12, 31)


def validate_date_range(value: date) -> None:
    """Dates far from now are refused: the bounds of a day, in any time zone, stay
    inside what datetimes and the database can hold."""
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        raise ValidationError(f"Enter a date from {EARLIEST_DATE} to {LATEST_DATE}.")


def error_sentences(form: forms.Form, labels: bool = False) -> list[str]:
    """Each error of a bound form as "field: why", the field named as the request names
    it, or by its label (``labels``) for a page's messages."""
    sentences = []
    for name, errors in form.errors.items():
        field = form.fields.get(name)
        if field is None:  # errors of the whole form
            sentences += errors
            continue
        shown = (field.label or name.replace("_", " ").capitalize()) if labels else name
        sentences += [f"{shown}: {error}" for error in errors]
    return sentences


def form_refusal(form: forms.Form) -> JsonResponse:
    """A JSON endpoint's answer to an invalid form: 400 with the first problem as a
    sentence (``error``, what the viewer shows) and every problem by field (``errors``)."""
    errors = {name: list(problems) for name, problems in form.errors.items()}
    return JsonResponse({"error": error_sentences(form)[0], "errors": errors}, status=400)


def flash_errors(request, form: forms.Form) -> None:
    """Show an invalid page form's problems as messages on the page rendered next."""
    for sentence in error_sentences(form, labels=True):
        messages.error(request, sentence)


class SlideUploadForm(forms.Form):
    file = forms.FileField(label="Slide file")
    label = forms.CharField(required=False, max_length=64, help_text="e.g. block A1, H&E")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.SLIDE_UPLOAD_MAX_BYTES:
            limit = settings.SLIDE_UPLOAD_MAX_BYTES / 1024**3
            raise forms.ValidationError(f"The file is larger than the {limit:.1f} GiB limit.")
        return upload


class ThumbnailForm(forms.Form):
    size = forms.ChoiceField(required=False, choices=[("small", "small"), ("large", "large")])
